// Package shaping limits the bandwidth of each container, as the platform
// promises it: two token buckets per container, one for the bytes the
// container sends (download, to clients) and one for the bytes it receives
// (upload), built on golang.org/x/time/rate.
//
// A Limiter holds the router-wide defaults and the number of routers that
// share each container's allowance (Peers, counted from heartbeats on NATS);
// it hands out one Bucket per container, which the route table keeps for as
// long as the container is routed. Traffic is charged through a Pacer: it
// reads at most what the bucket allows, then waits for the tokens before
// the next read, so TCP flow control slows the sender instead of the router
// buffering data.
//
// Every type is safe for concurrent use. A Bucket follows a change of the
// Limiter's peer count on its next use; its tokens are kept.
package shaping
