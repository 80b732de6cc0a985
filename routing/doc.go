// Package routing is the data path of a sluice router: the route table fed
// by lifecycle events, the HTTP proxy that serves it, the admin endpoints,
// and Router, which wires them to a region's NATS.
//
// Concurrency: Table.Apply is called by one event consumer at a time and
// publishes each new Snapshot through an atomic pointer; request handlers
// only load snapshots and per-app pointers, never a lock. Proxy and Admin are
// safe for concurrent use. Router owns every goroutine it starts (an errgroup)
// and stops them when the context given to Run is done.
package routing
