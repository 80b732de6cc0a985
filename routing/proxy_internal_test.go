package routing

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// deadlineRecorder is a ResponseWriter that counts the moves of its read
// deadline.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	moves int
}

func (w *deadlineRecorder) SetReadDeadline(time.Time) error {
	w.moves++
	return nil
}

// The transport may read the request body after the handler has returned,
// when the connection's deadlines belong to the next request: those reads
// must not move them.
func TestClientIdleStopsAtFinish(t *testing.T) {
	w := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
	idle := &clientIdle{rc: http.NewResponseController(w), idle: time.Minute}
	idle.reading()
	idle.read(nil)
	if w.moves != 1 {
		t.Fatalf("a read of the body moved the read deadline %d times, want 1", w.moves)
	}
	idle.finish()
	idle.readSet.Store(0) // as if the window had passed
	idle.reading()
	idle.read(io.EOF)
	if got := w.moves - 1; got != 0 {
		t.Fatalf("reads of the body after the handler returned moved the read deadline %d times, want 0", got)
	}
}
