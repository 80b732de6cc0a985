package testenv

import (
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it holds, and fails
// the test with what (the condition awaited, e.g. "the route is applied")
// if it still does not after Timeout.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still waiting until %s", Timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
