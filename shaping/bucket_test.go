package shaping

import (
	"context"
	"errors"
	"io"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const mb = 1_000_000

// zeros is an endless source of bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { return len(p), nil }

// transfer reads n bytes through p in 32 KiB reads and returns the time it
// took.
func transfer(t *testing.T, p *Pacer, n int64) time.Duration {
	t.Helper()
	start := time.Now()
	r := readerFunc(func(buf []byte) (int, error) { return p.Read(zeros{}, buf) })
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(r, n), make([]byte, 32<<10)); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	return time.Since(start)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// near fails unless got is within tol (a fraction) of want.
func near(t *testing.T, what string, got, want time.Duration, tol float64) {
	t.Helper()
	if math.Abs(float64(got-want)) > tol*float64(want) {
		t.Errorf("%s took %v, want %v ± %.0f%%", what, got, want, tol*100)
	}
}

func TestBurstThenSustainedRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewLimiter(Limits{Rate: 1 * mb, Burst: 4 * mb}).Bucket(Limits{})
		p := b.Pacer(t.Context(), Download)
		if got := transfer(t, p, 4*mb); got != 0 {
			t.Errorf("the burst took %v, want it at once", got)
		}
		near(t, "10 MB after the burst", transfer(t, p, 10*mb), 10*time.Second, 0.01)
		st := b.Stats()
		if st.Download.Bytes != 14*mb || st.Upload.Bytes != 0 {
			t.Errorf("stats count %d bytes down, %d up; want %d, 0", st.Download.Bytes, st.Upload.Bytes, 14*mb)
		}
		if got := p.Waited(); got < 9*time.Second {
			t.Errorf("the pacer waited %v, want about 10s", got)
		}
	})
}

func TestDirectionsAreSeparate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewLimiter(Limits{Rate: 1 * mb, Burst: 1 * mb}).Bucket(Limits{})
		transfer(t, b.Pacer(t.Context(), Download), 1*mb)
		if got := transfer(t, b.Pacer(t.Context(), Upload), 1*mb); got != 0 {
			t.Errorf("the upload burst took %v after a download drained its bucket, want it at once", got)
		}
	})
}

// parallel runs one transfer of n bytes per pacer at once and returns the
// time until the last one ends.
func parallel(t *testing.T, n int64, pacers ...*Pacer) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range pacers {
		wg.Go(func() { transfer(t, p, n) })
	}
	wg.Wait()
	return time.Since(start)
}

func TestConnectionsToOneContainerShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewLimiter(Limits{Rate: 1 * mb, Burst: 64 << 10}).Bucket(Limits{})
		got := parallel(t, 5*mb, b.Pacer(t.Context(), Download), b.Pacer(t.Context(), Download))
		// 10 MB less the burst, at 1 MB/s.
		near(t, "two 5 MB downloads from one container", got, 10*time.Second-65536*time.Microsecond, 0.01)
	})
}

func TestContainersDoNotShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimiter(Limits{Rate: 1 * mb, Burst: 64 << 10})
		got := parallel(t, 5*mb, l.Bucket(Limits{}).Pacer(t.Context(), Download), l.Bucket(Limits{}).Pacer(t.Context(), Download))
		// Each: 5 MB less its own burst, at 1 MB/s.
		near(t, "two 5 MB downloads from two containers", got, 5*time.Second-65536*time.Microsecond, 0.01)
	})
}

func TestAppAllowanceOverridesDefaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimiter(Limits{Rate: 1 * mb, Burst: 64 << 10})
		b := l.Bucket(Limits{Rate: 2 * mb})
		if got, want := b.Limits(), (Limits{Rate: 2 * mb, Burst: 64 << 10}); got != want {
			t.Errorf("limits %+v, want %+v (burst from the defaults)", got, want)
		}
		p := b.Pacer(t.Context(), Upload)
		transfer(t, p, 64<<10)
		near(t, "10 MB at 2 MB/s", transfer(t, p, 10*mb), 5*time.Second, 0.01)

		b.SetLimits(Limits{Rate: 5 * mb, Burst: 64 << 10})
		near(t, "10 MB after a raise to 5 MB/s", transfer(t, p, 10*mb), 2*time.Second, 0.01)
	})
}

func TestPeersDivideTheAllowance(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLimiter(Limits{Rate: 4 * mb, Burst: 4 * mb})
		b := l.Bucket(Limits{})
		p := b.Pacer(t.Context(), Download)
		transfer(t, p, 4*mb) // drain the burst
		l.SetPeers(4)
		near(t, "4 MB with 4 peers", transfer(t, p, 4*mb), 4*time.Second, 0.01)
		if got := b.Stats().Peers; got != 4 {
			t.Errorf("stats show %d peers, want 4", got)
		}
		l.SetPeers(1)
		near(t, "4 MB alone again", transfer(t, p, 4*mb), time.Second, 0.01)

		// A new bucket starts full with its share of the burst.
		l.SetPeers(2)
		fresh := l.Bucket(Limits{}).Pacer(t.Context(), Download)
		if got := transfer(t, fresh, 2*mb); got != 0 {
			t.Errorf("half the burst took %v with 2 peers, want it at once", got)
		}
		near(t, "1 MB more", transfer(t, fresh, 1*mb), 500*time.Millisecond, 0.01)
	})
}

// countingWriter counts what it is given, and the largest single write.
type countingWriter struct{ n, largest int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.largest = max(w.largest, len(p))
	return len(p), nil
}

func TestWritesLargerThanTheBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewLimiter(Limits{Rate: 1 * mb, Burst: 100_000}).Bucket(Limits{})
		var w countingWriter
		start := time.Now()
		n, err := b.Pacer(t.Context(), Upload).Write(&w, make([]byte, 1*mb))
		if err != nil || n != 1*mb || w.n != 1*mb {
			t.Fatalf("wrote %d (%d arrived), %v; want %d, nil", n, w.n, err, 1*mb)
		}
		if w.largest > 100_000 {
			t.Errorf("a write of %d bytes, more than the burst", w.largest)
		}
		near(t, "1 MB with a 100 kB burst", time.Since(start), 900*time.Millisecond, 0.01)
	})
}

func TestWaitEndsWithTheContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewLimiter(Limits{Rate: 1000, Burst: 1000}).Bucket(Limits{})
		ctx, cancel := context.WithCancel(t.Context())
		p := b.Pacer(ctx, Download)
		transfer(t, p, 1000)
		time.AfterFunc(500*time.Millisecond, cancel)
		start := time.Now()
		_, err := p.Read(zeros{}, make([]byte, 1000))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read while the client left: %v, want context.Canceled", err)
		}
		if got := time.Since(start); got != 500*time.Millisecond {
			t.Errorf("the wait lasted %v, want it to end with the context at 500ms", got)
		}
	})
}

func TestReadsLargerThanTheBurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A 10 kB burst, smaller than the proxy's 32 KiB buffers: each read
		// is cut to the burst, so that no wait asks for more than the
		// bucket can hold.
		b := NewLimiter(Limits{Rate: 1 * mb, Burst: 10_000}).Bucket(Limits{})
		// transfer fails the test on a read error.
		near(t, "1 MB with a 10 kB burst in 32 KiB reads", transfer(t, b.Pacer(t.Context(), Download), 1*mb), 990*time.Millisecond, 0.01)
	})
}

func TestNilPacerDoesNotShape(t *testing.T) {
	// With shaping off a stream has no Pacer: its bytes go straight through.
	var p *Pacer
	var w countingWriter
	if n, err := p.Write(&w, make([]byte, 1000)); n != 1000 || err != nil || w.n != 1000 {
		t.Errorf("nil Pacer Write: %d, %v (%d arrived); want 1000, nil", n, err, w.n)
	}
	if n, err := p.Read(zeros{}, make([]byte, 1000)); n != 1000 || err != nil {
		t.Errorf("nil Pacer Read: %d, %v; want 1000, nil", n, err)
	}
}
