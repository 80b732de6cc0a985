package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// Logs keeps the JSON lines a logger writes, for tests to search. It is safe
// for concurrent writers.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// CaptureLogs returns a logger at debug level that writes to the returned
// Logs, and to the test's log as well when SLUICE_TEST_LOG is set.
func CaptureLogs(t testing.TB) (zerolog.Logger, *Logs) {
	t.Helper()
	logs := &Logs{}
	var w zerolog.LevelWriter = zerolog.MultiLevelWriter(logs)
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		w = zerolog.MultiLevelWriter(logs, zerolog.NewTestWriter(t))
	}
	return zerolog.New(w).Level(zerolog.DebugLevel).With().Timestamp().Logger(), logs
}

// Write stores p, one or more log lines.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Decoded returns every line written so far that is a JSON object,
// decoded, in order.
func (l *Logs) Decoded() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			out = append(out, line)
		}
	}
	return out
}

// Lines returns the decoded lines whose message is msg and whose fields
// include every field of with: a string field contains the value given, any
// other field is equal to it in JSON (e.g. "seq": "12").
func (l *Logs) Lines(msg string, with map[string]string) []map[string]any {
	var out []map[string]any
	for _, line := range l.Decoded() {
		if line[zerolog.MessageFieldName] == msg && matches(line, with) {
			out = append(out, line)
		}
	}
	return out
}

func matches(line map[string]any, with map[string]string) bool {
	for k, want := range with {
		got, ok := line[k]
		if !ok {
			return false
		}
		if s, isString := got.(string); isString {
			if !strings.Contains(s, want) {
				return false
			}
			continue
		}
		if b, _ := json.Marshal(got); string(b) != want {
			return false
		}
	}
	return true
}

// WaitLine waits until a line with message msg and the fields with (as in
// Lines) has been written, and returns it.
func (l *Logs) WaitLine(t testing.TB, msg string, with map[string]string) map[string]any {
	t.Helper()
	return l.WaitMatch(t, fmt.Sprintf("%q with %v", msg, with), func(line map[string]any) bool {
		return line[zerolog.MessageFieldName] == msg && matches(line, with)
	})
}

// WaitMatch waits until a decoded line for which match returns true has
// been written, and returns the first one; if none has after Timeout, it
// fails the test with what (the line awaited) and the log.
func (l *Logs) WaitMatch(t testing.TB, what string, match func(line map[string]any) bool) map[string]any {
	t.Helper()
	var found map[string]any
	if !poll(func() bool {
		for _, line := range l.Decoded() {
			if match(line) {
				found = line
				return true
			}
		}
		return false
	}) {
		t.Fatalf("after %s, no log line %s in:\n%s", Timeout, what, l.String())
	}
	return found
}
