package shaping

import (
	"errors"
	"testing"
)

func TestParseBytes(t *testing.T) {
	good := []struct {
		in   string
		want int64
	}{
		{"1600000000", 1_600_000_000},
		{"20MB", 20_000_000},
		{"20 MB/s", 20_000_000},
		{"1.6GB", 1_600_000_000},
		{"1.6gb", 1_600_000_000},
		{"160Mbit", 20_000_000},
		{"12.8Gbit", 1_600_000_000},
		{"512KiB", 512 << 10},
		{"1kb", 1000},
		{"7B", 7},
		{"0", 0},
	}
	for _, c := range good {
		if got, err := ParseBytes(c.in); err != nil || got != c.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "MB", "20XB", "-1MB", "1e3", "NaN", "1.2.3MB", "10000TB", "20 M B"} {
		if got, err := ParseBytes(in); !errors.Is(err, ErrSize) {
			t.Errorf("ParseBytes(%q) = %d, %v; want ErrSize", in, got, err)
		}
	}
}

func TestFormatBytesRoundTrips(t *testing.T) {
	for _, n := range []int64{0, 7, 1000, 1500, 20_000_000, 1_600_000_000, 1_550_000_000, 3_200_000_000} {
		s := FormatBytes(n)
		if got, err := ParseBytes(s); err != nil || got != n {
			t.Errorf("ParseBytes(FormatBytes(%d) = %q) = %d, %v", n, s, got, err)
		}
	}
	if got := FormatBytes(1_600_000_000); got != "1.6GB" {
		t.Errorf("FormatBytes(1.6e9) = %q, want 1.6GB", got)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := DefaultLimits.Validate(); err != nil {
		t.Errorf("the default limits are invalid: %v", err)
	}
	for _, l := range []Limits{{0, 1}, {1, 0}, {-1, 1}, {1, MaxBytes + 1}} {
		if err := l.Validate(); !errors.Is(err, ErrSize) {
			t.Errorf("%+v.Validate() = %v, want ErrSize", l, err)
		}
	}
}

func TestDefaultLimitsAreThePlatformsPromise(t *testing.T) {
	// 20 MB/s (160 Mbit/s) and 1.6 GB (12.8 Gbit), in decimal units.
	if got, want := DefaultLimits, (Limits{Rate: 20e6, Burst: 1.6e9}); got != want {
		t.Errorf("DefaultLimits = %+v, want %+v", got, want)
	}
}
