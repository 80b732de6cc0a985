package routing_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-router/sluice/events"
	"github.com/sluice-router/sluice/routing"
	"github.com/sluice-router/sluice/shaping"
	"github.com/sluice-router/sluice/testenv"
)

// BenchmarkPublishToRoutable measures the time from the start of a publish
// (Publisher.Deploy, with its compare-and-set read) to the moment the router's
// table routes the new container, with 10k apps loaded, through an embedded
// NATS. It reports the median and the 99th percentile.
func BenchmarkPublishToRoutable(b *testing.B) {
	n := testenv.StartNATS(b)
	r := testenv.StartRouter(b, n.Connect(b), region)
	r.WaitReady(b)
	pub := n.Publisher(b, region)
	js := n.JetStream(b)
	const apps = 10_000
	ctx := context.Background()
	for i := range apps {
		app := "app-" + strconv.Itoa(i)
		data, _ := events.Encode(events.Event{Kind: events.KindDomains, App: app, Generation: 1, Domains: []string{app + ".example.com"}})
		if _, err := js.PublishAsync(events.Subject(region, app, events.AspectDomains), data); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("loading 10k apps took over a minute")
	}
	r.WaitRoutes(b, "10k apps", func(s *routing.Snapshot) bool { return s.Len() == apps })

	var lat []time.Duration
	gen := uint64(10)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		gen++
		app := "app-" + strconv.Itoa(i*7919%apps)
		id := "c" + strconv.FormatUint(gen, 10)
		start := time.Now()
		if err := pub.Deploy(ctx, app, gen, []events.Container{{ID: id, Address: "127.0.0.1:9"}}); err != nil {
			b.Fatal(err)
		}
		r.WaitRoutes(b, "deployed", testenv.Routed(app+".example.com", app, id))
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkProxy measures requests per second over keep-alive connections
// through the router, and straight to the container, side by side.
func BenchmarkProxy(b *testing.B) {
	_, r, pub := setup(b)
	c := testenv.StartContainer(b, "bench", "b1")
	ctx := context.Background()
	if err := pub.Domains(ctx, "bench", 1, []string{"bench.example.com"}); err != nil {
		b.Fatal(err)
	}
	if err := pub.Deploy(ctx, "bench", 2, testenv.Containers(c)); err != nil {
		b.Fatal(err)
	}
	r.WaitRoutes(b, "deployed", testenv.Routed("bench.example.com", "bench", "b1"))
	for _, target := range []struct{ name, url string }{{"direct", "http://" + c.Address()}, {"router", r.URL}} {
		b.Run(target.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, target.url+"/", nil)
					req.Host = "bench.example.com"
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Error(fmt.Sprint("status ", resp.StatusCode))
						return
					}
				}
			})
		})
	}
}

// BenchmarkShaping measures what shaping costs when traffic stays under the
// limit: the same requests through a router without shaping and through one
// whose buckets never run dry, side by side. "small" is the container's JSON
// reply over keep-alive (requests/s); "1MB" a 1 MB response (throughput).
func BenchmarkShaping(b *testing.B) {
	n := testenv.StartNATS(b)
	off := testenv.StartRouterConfig(b, n.Connect(b), routing.Config{Region: region, NoShaping: true})
	on := testenv.StartRouterConfig(b, n.Connect(b), routing.Config{Region: region, Shaping: shaping.Limits{Rate: 1e15, Burst: 1e15}})
	pub := n.Publisher(b, region)
	c := testenv.StartContainer(b, "bench", "b1")
	ctx := context.Background()
	if err := pub.Domains(ctx, "bench", 1, []string{"bench.example.com"}); err != nil {
		b.Fatal(err)
	}
	if err := pub.Deploy(ctx, "bench", 2, testenv.Containers(c)); err != nil {
		b.Fatal(err)
	}
	for _, r := range []*testenv.Router{off, on} {
		r.WaitRoutes(b, "deployed", testenv.Routed("bench.example.com", "bench", "b1"))
	}
	for _, load := range []struct {
		name string
		path string
		size int64
	}{{"small", "/", 0}, {"1MB", "/bytes/1000000", 1_000_000}} {
		for _, r := range []struct {
			name string
			r    *testenv.Router
		}{{"off", off}, {"on", on}} {
			b.Run(load.name+"/shaping="+r.name, func(b *testing.B) {
				client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				defer client.CloseIdleConnections()
				b.SetBytes(load.size)
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						req, _ := http.NewRequest(http.MethodGet, r.r.URL+load.path, nil)
						req.Host = "bench.example.com"
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Error(fmt.Sprint("status ", resp.StatusCode))
							return
						}
					}
				})
			})
		}
	}
}
