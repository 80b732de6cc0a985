package shaping

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Limits are the allowance of one container, each way: a sustained Rate in
// bytes per second and a Burst in bytes. The bucket starts full: a quiet
// container gets its burst at full speed, then the sustained rate.
type Limits struct {
	Rate  int64 `json:"rate"`
	Burst int64 `json:"burst"`
}

// DefaultLimits is the platform's promise: 20 MB/s (160 Mbit/s) and a
// burst of 1.6 GB (12.8 Gbit), in decimal units.
var DefaultLimits = Limits{Rate: 20_000_000, Burst: 1_600_000_000}

// MaxBytes bounds rates and bursts so that they travel exactly in JSON
// (2^53-1, as generations).
const MaxBytes = 1<<53 - 1

// ErrSize reports a size or rate that cannot be parsed or is out of range.
var ErrSize = errors.New("invalid size")

// units maps a lower-case suffix to its size in bytes. Units are decimal
// (1 MB = 10^6 bytes) as in the platform's promise; the binary ones are
// accepted for those who write them.
var units = map[string]float64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	"kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
}

// ParseBytes parses a size such as "1600000000", "1.6GB", "20MB", "160Mbit"
// or "512KiB" into bytes. Units are case-insensitive; a rate may end in
// "/s" ("20MB/s"). The result is rounded to the nearest byte and must be
// between 0 and MaxBytes.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult, ok := units[unit]
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (use B, KB, MB, GB, Mbit, Gbit)", ErrSize, s, unit)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("%w %q: not a number followed by a unit", ErrSize, s)
	}
	b := math.Round(f * mult)
	if b > MaxBytes {
		return 0, fmt.Errorf("%w %q: more than %d bytes", ErrSize, s, int64(MaxBytes))
	}
	return int64(b), nil
}

// FormatBytes writes n in the largest decimal unit that keeps it exact, as
// ParseBytes reads it back ("20MB", "1.6GB", "1500B").
func FormatBytes(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}} {
		if n >= u.size && (n*10)%u.size == 0 {
			return strconv.FormatFloat(float64(n)/float64(u.size), 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// Validate reports whether l can shape traffic: both fields positive and at
// most MaxBytes.
func (l Limits) Validate() error {
	switch {
	case l.Rate <= 0 || l.Rate > MaxBytes:
		return fmt.Errorf("%w: rate %d out of range 1..%d bytes per second", ErrSize, l.Rate, int64(MaxBytes))
	case l.Burst <= 0 || l.Burst > MaxBytes:
		return fmt.Errorf("%w: burst %d out of range 1..%d bytes", ErrSize, l.Burst, int64(MaxBytes))
	}
	return nil
}

// Or returns l with its zero fields taken from d.
func (l Limits) Or(d Limits) Limits {
	if l.Rate == 0 {
		l.Rate = d.Rate
	}
	if l.Burst == 0 {
		l.Burst = d.Burst
	}
	return l
}

// share returns the part of l each of peers routers enforces.
func (l Limits) share(peers int) Limits {
	if peers <= 1 {
		return l
	}
	n := int64(peers)
	return Limits{Rate: max(l.Rate/n, 1), Burst: max(l.Burst/n, 1)}
}
