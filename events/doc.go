// Package events defines the app lifecycle events that drive sluice routers,
// their wire format on NATS, and both ends of their transport: a Publisher
// for the control plane and a Subscriber for routers.
//
// Every event is level, not delta: a deploy, restart or scale carries the
// complete container set of an app, a domains event its complete domain set,
// and each carries a per-app generation that only grows. Events of a region
// are kept by a JetStream stream with a short history per subject (per app
// and aspect), whose newest valid message is the current state, so a router
// that starts or reconnects reads the current state of every app of its
// region, then follows live changes. docs/events.md is the
// wire-format reference.
//
// Decode and Validate are pure functions, safe for concurrent use. A
// Publisher is safe for concurrent use. A Subscriber delivers batches to its
// Handler from one goroutine, in stream order.
package events
