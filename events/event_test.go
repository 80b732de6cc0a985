package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	evs := []Event{
		{Kind: KindDeploy, App: "my-app", Generation: 42, Containers: []Container{{ID: "web-1", Address: "10.0.0.1:31000"}, {ID: "web-2", Address: "[2001:db8::1]:31001"}, {ID: "web-3", Address: "node-3.internal:8080"}}},
		{Kind: KindRestart, App: "my-app", Generation: 43, Containers: []Container{{ID: "web-4", Address: "10.0.0.2:31000"}}, Rate: 40_000_000, Burst: 3_200_000_000},
		{Kind: KindScale, App: "my-app", Generation: 44, Containers: []Container{}},
		{Kind: KindDomains, App: "my-app", Generation: 45, Domains: []string{"my-app.osc-fr1.example.com", "*.example.org", "xn--caf-dma.example.com"},
			Options:   AppOptions{Balance: BalanceLeastConn, Sticky: true, ErrorPage: "https://pages.example.com/oops.html"},
			ClaimedAt: map[string]int64{"my-app.osc-fr1.example.com": 1, "*.example.org": MaxClaimedAt}},
		{Kind: KindDelete, App: "my-app", Generation: MaxGeneration},
	}
	for _, ev := range evs {
		t.Run(string(ev.Kind), func(t *testing.T) {
			data, err := Encode(ev)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := Decode(Subject("osc-fr1", ev.App, ev.Kind.Aspect()), data)
			if err != nil {
				t.Fatalf("Decode(%s): %v", data, err)
			}
			if got.Kind != ev.Kind || got.App != ev.App || got.Generation != ev.Generation ||
				!slices.Equal(got.Containers, ev.Containers) || !slices.Equal(got.Domains, ev.Domains) ||
				got.Rate != ev.Rate || got.Burst != ev.Burst || got.Options != ev.Options || !maps.Equal(got.ClaimedAt, ev.ClaimedAt) {
				t.Fatalf("round trip: got %+v, want %+v", got, ev)
			}
		})
	}
}

func TestEncodeWritesEmptySets(t *testing.T) {
	data, err := Encode(Event{Kind: KindScale, App: "a", Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(data), `{"v":1,"kind":"scale","app":"a","generation":1,"containers":[]}`; got != want {
		t.Fatalf("Encode = %s, want %s", got, want)
	}
}

func TestEncodeWritesClaimedAt(t *testing.T) {
	ev := Event{Kind: KindDomains, App: "a", Generation: 2, Domains: []string{"b.example.com", "a.example.com"},
		ClaimedAt: map[string]int64{"b.example.com": 1700000000000, "a.example.com": 1600000000000}}
	data, err := Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	// Keys in a fixed order, so that publishing the same event twice
	// gives the same bytes.
	want := `{"v":1,"kind":"domains","app":"a","generation":2,"domains":["b.example.com","a.example.com"],"claimed_at":{"a.example.com":1600000000000,"b.example.com":1700000000000}}`
	if got := string(data); got != want {
		t.Fatalf("Encode = %s, want %s", got, want)
	}
	// Without it (a publisher in another language), the field is absent.
	ev.ClaimedAt = nil
	if data, err = Encode(ev); err != nil || strings.Contains(string(data), "claimed_at") {
		t.Fatalf("Encode without claimed_at = %s, %v", data, err)
	}
}

func TestValidateRejects(t *testing.T) {
	c := func(addr string) []Container { return []Container{{ID: "c", Address: addr}} }
	tests := []struct {
		name string
		ev   Event
		want string // part of the error
	}{
		{"unknown kind", Event{Kind: "boom", App: "a", Generation: 1}, "unknown kind"},
		{"empty app", Event{Kind: KindDelete, App: "", Generation: 1}, "app name"},
		{"app with dot", Event{Kind: KindDelete, App: "a.b", Generation: 1}, "app name"},
		{"app with wildcard", Event{Kind: KindDelete, App: "a*", Generation: 1}, "app name"},
		{"app upper-case", Event{Kind: KindDelete, App: "App", Generation: 1}, "app name"},
		{"app leading dash", Event{Kind: KindDelete, App: "-a", Generation: 1}, "app name"},
		{"app too long", Event{Kind: KindDelete, App: strings.Repeat("a", 64), Generation: 1}, "app name"},
		{"zero generation", Event{Kind: KindDelete, App: "a", Generation: 0}, "generation"},
		{"huge generation", Event{Kind: KindDelete, App: "a", Generation: MaxGeneration + 1}, "generation"},
		{"no port", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("10.0.0.1")}, "HOST:PORT"},
		{"port zero", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("10.0.0.1:0")}, "port"},
		{"port too big", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("10.0.0.1:65536")}, "port"},
		{"port with sign", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("10.0.0.1:+80")}, "port"},
		{"bare IPv6", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("2001:db8::1:80")}, "HOST:PORT"},
		{"IPv6 zone", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("[fe80::1%eth0]:80")}, "zone"},
		{"unspecified", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("0.0.0.0:80")}, "unicast"},
		{"bad host", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("bad_host:80")}, "neither"},
		{"bad IPv4", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: c("10.0.0.300:80")}, "neither"},
		{"bad id", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: []Container{{ID: "a b", Address: "10.0.0.1:80"}}}, "container id"},
		{"dup id", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: []Container{{ID: "x", Address: "10.0.0.1:80"}, {ID: "x", Address: "10.0.0.2:80"}}}, "twice"},
		{"dup address", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: []Container{{ID: "x", Address: "10.0.0.1:80"}, {ID: "y", Address: "10.0.0.1:80"}}}, "twice"},
		{"too many containers", Event{Kind: KindDeploy, App: "a", Generation: 1, Containers: make([]Container, MaxContainers+1)}, "containers"},
		{"upper-case domain", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"Example.com"}}, "lowercase"},
		{"single label", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"localhost"}}, "two labels"},
		{"inner wildcard", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.*.example.com"}}, "'*'"},
		{"bare wildcard", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"*.com"}}, "two labels"},
		{"U-label", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"café.example.com"}}, "A-labels"},
		{"bad A-label", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"xn--zz.example.com"}}, "A-label"},
		{"reserved hyphens", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"ab--c.example.com"}}, "reserved"},
		{"trailing dot", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"example.com."}}, "lowercase"},
		{"numeric TLD", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"10.0.0.1"}}, "lowercase"},
		{"label too long", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{strings.Repeat("a", 64) + ".com"}}, "lowercase"},
		{"negative rate", Event{Kind: KindDeploy, App: "a", Generation: 1, Rate: -1}, "rate"},
		{"huge burst", Event{Kind: KindScale, App: "a", Generation: 1, Burst: MaxBandwidth + 1}, "burst"},
		{"rate on domains", Event{Kind: KindDomains, App: "a", Generation: 1, Rate: 1000}, "container events only"},
		{"unknown balance", Event{Kind: KindDomains, App: "a", Generation: 1, Options: AppOptions{Balance: "random"}}, "balance"},
		{"relative error page", Event{Kind: KindDomains, App: "a", Generation: 1, Options: AppOptions{ErrorPage: "/oops.html"}}, "absolute"},
		{"error page with credentials", Event{Kind: KindDomains, App: "a", Generation: 1, Options: AppOptions{ErrorPage: "https://u:p@x.example.com/"}}, "credentials"},
		{"ftp error page", Event{Kind: KindDomains, App: "a", Generation: 1, Options: AppOptions{ErrorPage: "ftp://x.example.com/e.html"}}, "http"},
		{"options on deploy", Event{Kind: KindDeploy, App: "a", Generation: 1, Options: AppOptions{Sticky: true}}, "domains events only"},
		{"dup domain", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.com", "a.com"}}, "twice"},
		{"claimed_at of another domain", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.com"}, ClaimedAt: map[string]int64{"b.com": 1}}, "not one of the event's domains"},
		{"claimed_at zero", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.com"}, ClaimedAt: map[string]int64{"a.com": 0}}, "out of range"},
		{"claimed_at negative", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.com"}, ClaimedAt: map[string]int64{"a.com": -5}}, "out of range"},
		{"claimed_at too big", Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"a.com"}, ClaimedAt: map[string]int64{"a.com": MaxClaimedAt + 1}}, "out of range"},
		{"claimed_at on delete", Event{Kind: KindDelete, App: "a", Generation: 1, ClaimedAt: map[string]int64{}}, "domains events only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ev.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
			if _, err := Encode(tt.ev); err == nil {
				t.Fatalf("Encode accepted an invalid event")
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	subj := Subject("r1", "a", AspectContainers)
	tests := []struct{ name, subject, data, want string }{
		{"bad subject", "sluice.r1.a.containers", `{}`, "subject"},
		{"unknown aspect", "sluice.r1.app.a.secrets", `{}`, "aspect"},
		{"too big", subj, `{"v":1,"pad":"` + strings.Repeat("x", MaxEventSize) + `"}`, "more than"},
		{"not an object", subj, `[1,2]`, "malformed"},
		{"string generation", subj, `{"v":1,"kind":"deploy","app":"a","generation":"1","containers":[]}`, "malformed"},
		{"float generation", subj, `{"v":1,"kind":"deploy","app":"a","generation":1.5,"containers":[]}`, "malformed"},
		{"no generation", subj, `{"v":1,"kind":"deploy","app":"a","containers":[]}`, "no generation"},
		{"delete with containers", Subject("r1", "a", AspectDelete), `{"v":1,"kind":"delete","app":"a","generation":1,"containers":[]}`, "with containers"},
		{"claimed_at on deploy", subj, `{"v":1,"kind":"deploy","app":"a","generation":1,"containers":[],"claimed_at":{}}`, "claimed_at"},
		{"claimed_at of an unlisted domain", Subject("r1", "a", AspectDomains), `{"v":1,"kind":"domains","app":"a","generation":1,"domains":["a.com"],"claimed_at":{"a.com":5,"b.com":6}}`, "not one of the event's domains"},
		{"float claimed_at", Subject("r1", "a", AspectDomains), `{"v":1,"kind":"domains","app":"a","generation":1,"domains":["a.com"],"claimed_at":{"a.com":1.5}}`, "malformed"},
		{"claimed_at out of range", Subject("r1", "a", AspectDomains), `{"v":1,"kind":"domains","app":"a","generation":1,"domains":["a.com"],"claimed_at":{"a.com":9007199254740992}}`, "out of range"},
		{"deploy with domains", subj, `{"v":1,"kind":"deploy","app":"a","generation":1,"containers":[],"domains":[]}`, "with domains"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.subject, []byte(tt.data))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("sluice.osc-fr1.app.my-app.containers", []byte(`{"v":1,"kind":"deploy","app":"my-app","generation":42,"containers":[{"id":"web-1","address":"10.0.0.1:31000"}]}`))
	f.Add("sluice.osc-fr1.app.my-app.domains", []byte(`{"v":1,"kind":"domains","app":"my-app","generation":43,"domains":["*.example.com","xn--caf-dma.example.com"]}`))
	f.Add("sluice.osc-fr1.app.my-app.domains", []byte(`{"v":1,"kind":"domains","app":"my-app","generation":44,"domains":["a.example.com"],"claimed_at":{"a.example.com":1700000000000}}`))
	f.Add("sluice.osc-fr1.app.my-app.delete", []byte(`{"v":1,"kind":"delete","app":"my-app","generation":44}`))
	f.Add("sluice.osc-fr1.app.x.containers", []byte(`{"v":1,"kind":"scale","app":"x","generation":1,"containers":[{"id":"a","address":"[::1]:1"}]}`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		ev, err := Decode(subject, data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Whatever is accepted is valid, and survives a round trip.
		if err := ev.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid event: %v", err)
		}
		data2, err := Encode(ev)
		if err != nil {
			t.Fatalf("Encode of a decoded event: %v", err)
		}
		ev2, err := Decode(subject, data2)
		if err != nil || ev2.Generation != ev.Generation || !slices.Equal(ev2.Containers, ev.Containers) || !slices.Equal(ev2.Domains, ev.Domains) || len(ev2.ClaimedAt) != len(ev.ClaimedAt) {
			t.Fatalf("round trip: %+v, %v", ev2, err)
		}
	})
}

// An event that passes Validate may still encode to more than MaxEventSize
// (1000 containers with long ids and host names): Encode refuses it, since
// every router would reject it.
func TestEncodeRefusesOversizedEvent(t *testing.T) {
	containers := func(n int) []Container {
		cs := make([]Container, n)
		for i := range cs {
			cs[i] = Container{
				ID:      fmt.Sprintf("web-%0120d", i),
				Address: fmt.Sprintf("node-%d.%s.internal:8080", i, strings.Repeat(strings.Repeat("a", 60)+".", 3)[:182]),
			}
		}
		return cs
	}
	for _, tt := range []struct {
		name string
		n    int
		ok   bool
	}{{"under the limit", 100, true}, {"over the limit", MaxContainers, false}} {
		t.Run(tt.name, func(t *testing.T) {
			ev := Event{Kind: KindDeploy, App: "big", Generation: 1, Containers: containers(tt.n)}
			if err := ev.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			data, err := Encode(ev)
			if tt.ok {
				if err != nil || len(data) > MaxEventSize {
					t.Fatalf("Encode: %d bytes, %v; want at most %d bytes", len(data), err, MaxEventSize)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || data != nil {
				t.Fatalf("Encode of an oversized event: %d bytes, err %v; want ErrInvalid", len(data), err)
			}
		})
	}
}

// AppOptions in JSON (as /routes shows them) use the wire names, with the
// values the wire carries.
func TestAppOptionsJSONUsesWireNames(t *testing.T) {
	opts := AppOptions{Balance: BalanceLeastConn, Sticky: true, ErrorPage: "https://pages.example.com/oops.html",
		ForceHTTPS: true, Canonical: "www.example.com", TLSPassthrough: true}
	data, err := Encode(Event{Kind: KindDomains, App: "a", Generation: 1, Domains: []string{"www.example.com"}, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	var wire map[string]any
	if err := json.Unmarshal(data, &wire); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("AppOptions JSON has %d fields, want 6: %s", len(got), b)
	}
	for k, v := range got {
		if wire[k] != v {
			t.Errorf("AppOptions JSON %q = %v, the wire has %v", k, v, wire[k])
		}
	}
	if b, _ := json.Marshal(AppOptions{}); string(b) != "{}" {
		t.Errorf("default options in JSON: %s, want {}", b)
	}
}
