package routing

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-router/sluice/events"
)

// webApp returns an app with containers a, b and c, balanced by balance.
func webApp(t *testing.T, balance events.Balance) *App {
	t.Helper()
	tb := NewTable(zerolog.Nop(), nil)
	tb.Apply([]events.Event{deploy("web", 1, "a", "b", "c"), {Kind: events.KindDomains, App: "web", Generation: 2,
		Domains: []string{"web.example.com"}, Options: events.AppOptions{Balance: balance, Sticky: true}}})
	a, _ := tb.Snapshot().App("web")
	return a
}

func byID(a *App, id string) Container {
	for _, c := range a.Containers {
		if c.ID == id {
			return c
		}
	}
	panic("no container " + id)
}

func mustPick(t *testing.T, a *App, sticky string, limit int64, tried ...*backend) string {
	t.Helper()
	c, res := a.pick(sticky, limit, tried)
	if res != picked {
		t.Fatalf("pick: %v, want a container", res)
	}
	return c.ID
}

func TestPickLeastConn(t *testing.T) {
	a := webApp(t, events.BalanceLeastConn)
	// Two requests in flight on a, one on b: c is the least loaded.
	for _, id := range []string{"a", "a", "b"} {
		c := byID(a, id)
		c.b.acquire(0)
		a.answered(c) // answered, still streaming: active, not busy
	}
	if got := mustPick(t, a, "", 0); got != "c" {
		t.Fatalf("least-conn picked %s, want c", got)
	}
	if got := mustPick(t, a, "", 0); got != "b" && got != "c" {
		t.Fatalf("least-conn picked %s, want b or c (one each in flight)", got)
	}
}

func TestPickSkipsQuarantinedAndTried(t *testing.T) {
	a := webApp(t, events.BalanceRoundRobin)
	byID(a, "a").b.down.Store(true)
	for range 10 {
		if got := mustPick(t, a, "", 0, byID(a, "b").b); got != "c" {
			t.Fatalf("picked %s with a quarantined and b tried, want c", got)
		}
	}
	// With every other container tried, a quarantined one is still tried:
	// it may be back before its next probe.
	if got := mustPick(t, a, "", 0, byID(a, "b").b, byID(a, "c").b); got != "a" {
		t.Fatalf("picked %s, want the quarantined a as a last resort", got)
	}
	if _, res := a.pick("", 0, []*backend{byID(a, "a").b, byID(a, "b").b, byID(a, "c").b}); res != noneLeft {
		t.Fatalf("pick with every container tried: %v, want noneLeft", res)
	}
}

func TestPickSticky(t *testing.T) {
	a := webApp(t, events.BalanceRoundRobin)
	b := byID(a, "b")
	for range 5 {
		if got := mustPick(t, a, b.b.sticky, 0); got != "b" {
			t.Fatalf("sticky to b, picked %s", got)
		}
	}
	// The cookie of a container that is gone, or quarantined, is ignored.
	if got := mustPick(t, a, "0123456789abcdef", 0); got == "" {
		t.Fatal("no container for an unknown sticky value")
	}
	b.b.down.Store(true)
	if got := mustPick(t, a, b.b.sticky, 0); got == "b" {
		t.Fatal("sticky to a quarantined container")
	}
}

func TestPickHonoursTheInflightLimit(t *testing.T) {
	a := webApp(t, events.BalanceRoundRobin)
	for range 6 {
		mustPick(t, a, "", 2)
	}
	if _, res := a.pick("", 2, nil); res != allBusy {
		t.Fatalf("a 7th request with 3 containers of 2 slots: %v, want allBusy", res)
	}
	a.answered(byID(a, "b"))
	if got := mustPick(t, a, "", 2); got != "b" {
		t.Fatalf("picked %s after b released a slot, want b", got)
	}
}

// A waiter that gives up after it was woken passes the wake on: the free
// slot it announced goes to the next waiter.
func TestWaitQueueLeavePassesTheWakeOn(t *testing.T) {
	var q waitQueue
	first, _ := q.join(2)
	second, _ := q.join(2)
	q.wake()
	q.leave(first) // it timed out as it was woken
	select {
	case <-second:
	default:
		t.Fatal("the second waiter was not woken: the slot was lost")
	}
	if n := q.n.Load(); n != 0 {
		t.Fatalf("%d waiters left, want 0", n)
	}
}
