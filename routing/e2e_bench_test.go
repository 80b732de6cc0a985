package routing_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
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

// deployBench publishes the app "bench" at bench.example.com, running c.
func deployBench(b *testing.B, pub *events.Publisher, c *testenv.Container) {
	b.Helper()
	ctx := context.Background()
	if err := pub.Domains(ctx, "bench", 1, []string{"bench.example.com"}); err != nil {
		b.Fatal(err)
	}
	if err := pub.Deploy(ctx, "bench", 2, testenv.Containers(c)); err != nil {
		b.Fatal(err)
	}
}

// hammerClients is how many goroutines per CPU hammer sends requests from.
const hammerClients = 4

// hammer sends GET url to bench.example.com from hammerClients goroutines
// per CPU over client until the benchmark ends; each request must get a
// 200. Besides ns/op (the inverse of the throughput), it reports req/s and
// the mean latency of a request ("lat-µs"): with a fixed number of clients
// each waiting for its answer, latency = clients × time per request.
func hammer(b *testing.B, client *http.Client, url string) {
	b.SetParallelism(hammerClients)
	defer func() {
		perReq := b.Elapsed().Seconds() / float64(b.N)
		b.ReportMetric(1/perReq, "req/s")
		b.ReportMetric(float64(hammerClients*runtime.GOMAXPROCS(0))*perReq*1e6, "lat-µs")
	}()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
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
}

// BenchmarkProxy measures requests per second over keep-alive connections
// through the router, and straight to the container, side by side.
func BenchmarkProxy(b *testing.B) {
	_, r, pub := setup(b)
	c := testenv.StartContainer(b, "bench", "b1")
	deployBench(b, pub, c)
	r.WaitRoutes(b, "deployed", testenv.Routed("bench.example.com", "bench", "b1"))
	for _, target := range []struct{ name, url string }{{"direct", "http://" + c.Address()}, {"router", r.URL}} {
		b.Run(target.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			defer client.CloseIdleConnections()
			hammer(b, client, target.url+"/")
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
	deployBench(b, pub, c)
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
				hammer(b, client, r.r.URL+load.path)
			})
		}
	}
}

// waitCertApplied waits until r serves a certificate for domain.
func waitCertApplied(b *testing.B, r *testenv.Router, domain string) {
	b.Helper()
	testenv.Eventually(b, "the certificate of "+domain+" is applied", func() bool {
		_, ok := r.Certs().Lookup(domain)
		return ok
	})
}

// BenchmarkHandshake measures full TLS handshakes (no resumption) through
// the router's HTTPS listener, with an ECDSA P-256 and an RSA-2048
// certificate: ns per handshake, both ends on the same machine.
func BenchmarkHandshake(b *testing.B) {
	n := testenv.StartNATS(b)
	r := testenv.StartRouter(b, n.Connect(b), region)
	r.WaitReady(b)
	pub := n.Publisher(b, region)
	ca := testenv.NewCA(b)
	for _, key := range []struct {
		name string
		rsa  bool
	}{{"ecdsa-p256", false}, {"rsa-2048", true}} {
		domain := key.name + ".example.com"
		chain, pem := ca.Issue(b, testenv.CertOptions{RSA: key.rsa}, domain)
		if err := pub.Cert(context.Background(), domain, 1, chain, pem); err != nil {
			b.Fatal(err)
		}
		waitCertApplied(b, r, domain)
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: domain, ClientSessionCache: nil}
		b.Run(key.name, func(b *testing.B) {
			b.SetParallelism(2)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					conn, err := tls.Dial("tcp", r.HTTPSAddr, cfg)
					if err != nil {
						b.Error(err)
						return
					}
					conn.Close()
				}
			})
		})
	}
}

// BenchmarkHTTPS measures requests over keep-alive connections through the
// router in plain HTTP, HTTPS with HTTP/1.1 and HTTPS with HTTP/2, side by
// side.
func BenchmarkHTTPS(b *testing.B) {
	n := testenv.StartNATS(b)
	r := testenv.StartRouter(b, n.Connect(b), region)
	r.WaitReady(b)
	pub := n.Publisher(b, region)
	ca := testenv.NewCA(b)
	c := testenv.StartContainer(b, "bench", "b1")
	deployBench(b, pub, c)
	chain, key := ca.Issue(b, testenv.CertOptions{}, "bench.example.com")
	if err := pub.Cert(context.Background(), "bench.example.com", 3, chain, key); err != nil {
		b.Fatal(err)
	}
	waitCertApplied(b, r, "bench.example.com")
	r.WaitRoutes(b, "deployed", testenv.Routed("bench.example.com", "bench", "b1"))
	for _, mode := range []struct {
		name, url string
		h2        bool
	}{{"http", r.URL, false}, {"https-h1", "https://" + r.HTTPSAddr, false}, {"https-h2", "https://" + r.HTTPSAddr, true}} {
		b.Run(mode.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64, ForceAttemptHTTP2: mode.h2,
				TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "bench.example.com"}}
			if !mode.h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			client := &http.Client{Transport: tr}
			defer client.CloseIdleConnections()
			hammer(b, client, mode.url+"/")
		})
	}
}

// BenchmarkPassthrough measures the throughput of a TLS connection relayed
// to a container that terminates TLS itself, against the same connection
// made straight to the container: 1 MB responses over keep-alive.
func BenchmarkPassthrough(b *testing.B) {
	n := testenv.StartNATS(b)
	r := testenv.StartRouterConfig(b, n.Connect(b), routing.Config{Region: region, NoShaping: true})
	r.WaitReady(b)
	pub := n.Publisher(b, region)
	ca := testenv.NewCA(b)
	chain, key := ca.Issue(b, testenv.CertOptions{}, "secure.example.com")
	c := testenv.StartTLSContainer(b, "secure", "t1", "127.0.0.1:0", chain, key)
	ctx := context.Background()
	if err := pub.Publish(ctx, events.Event{Kind: events.KindDomains, App: "secure", Generation: 1, Domains: []string{"secure.example.com"}, Options: events.AppOptions{TLSPassthrough: true}}); err != nil {
		b.Fatal(err)
	}
	if err := pub.Deploy(ctx, "secure", 2, testenv.Containers(c)); err != nil {
		b.Fatal(err)
	}
	r.WaitRoutes(b, "deployed", testenv.Routed("secure.example.com", "secure", "t1"))
	for _, target := range []struct{ name, addr string }{{"direct", c.Address()}, {"router", r.HTTPSAddr}} {
		b.Run(target.name, func(b *testing.B) {
			d := &net.Dialer{}
			client := &http.Client{Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: ca.Pool()},
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return d.DialContext(ctx, network, target.addr)
				},
			}}
			defer client.CloseIdleConnections()
			b.SetBytes(1_000_000)
			for b.Loop() {
				resp, err := client.Get("https://secure.example.com/bytes/1000000")
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
