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
	if !poll(cond) {
		t.Fatalf("after %s, still waiting until %s", Timeout, what)
	}
}

// poll calls cond every few milliseconds until it returns true, and
// reports false if Timeout passes first.
func poll(cond func() bool) bool {
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
