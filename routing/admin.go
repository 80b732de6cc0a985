package routing

import (
	"encoding/json"
	"net/http"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/shaping"
)

// Admin serves the router's state on the admin listener:
//
//	GET /healthz  200 while the process runs
//	GET /readyz   200 once the region's state is loaded, else 503
//	GET /routes   the route table as JSON
type Admin struct {
	// Table is the route table shown by /routes. Required.
	Table *Table
	// Events reports the event consumer's progress. Required.
	Events func() events.Status
	// NATS reports the state of the connection to NATS, e.g. "CONNECTED".
	// Nil leaves it out.
	NATS func() string
	// Shaping is the router's bandwidth limiter, shown by /readyz and
	// /routes. Nil means shaping is off.
	Shaping *shaping.Limiter
}

var _ http.Handler = (*Admin)(nil)

// adminStatus is the state both /readyz and /routes report.
type adminStatus struct {
	Ready   bool           `json:"ready"`
	NATS    string         `json:"nats,omitempty"`
	Events  events.Status  `json:"events"`
	Version uint64         `json:"version"`
	Apps    int            `json:"apps"`
	Shaping *shapingStatus `json:"shaping,omitempty"`
}

// shapingStatus is the router-wide side of shaping.
type shapingStatus struct {
	// Defaults is the allowance of a container whose app sets none.
	Defaults shaping.Limits `json:"defaults"`
	// Peers is the number of routers sharing each allowance.
	Peers int `json:"peers"`
}

func (a *Admin) status(s *Snapshot) adminStatus {
	ev := a.Events()
	st := adminStatus{Ready: ev.Ready, Events: ev, Version: s.Version(), Apps: s.Len()}
	if a.NATS != nil {
		st.NATS = a.NATS()
	}
	if a.Shaping != nil {
		st.Shaping = &shapingStatus{Defaults: a.Shaping.Defaults(), Peers: a.Shaping.Peers()}
	}
	return st
}

func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	snap := a.Table.Snapshot()
	switch r.URL.Path {
	case "/healthz":
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	case "/readyz":
		st := a.status(snap)
		code := http.StatusOK
		if !st.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, st)
	case "/routes":
		writeJSON(w, http.StatusOK, struct {
			adminStatus
			Routes []*App `json:"routes"`
		}{a.status(snap), snap.Apps()})
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may be gone; nothing to do about it
}
