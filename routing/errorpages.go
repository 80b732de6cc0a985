package routing

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Bounds on the apps' own error pages.
const (
	MaxErrorPageSize = 64 << 10         // a larger page is refused
	errorPageTTL     = 5 * time.Minute  // a page is fetched again after that
	errorPageRetry   = 30 * time.Second // a failed fetch is retried after that
	errorPageTimeout = 5 * time.Second
)

// errorPages fetches and caches the apps' error pages. A page is fetched the
// first time it is needed, in the background: until it arrives (or if it
// cannot be fetched), the router's own page is sent.
type errorPages struct {
	client   *http.Client
	log      zerolog.Logger
	requests chan string
	done     chan struct{} // closed when run returns
	fetching sync.WaitGroup

	mu    sync.Mutex
	pages map[string]*cachedPage
}

type cachedPage struct {
	body     []byte // nil until fetched
	next     time.Time
	fetching bool
}

func newErrorPages(log zerolog.Logger) *errorPages {
	return &errorPages{
		client:   &http.Client{Timeout: errorPageTimeout},
		log:      log,
		requests: make(chan string, 64),
		done:     make(chan struct{}),
		pages:    map[string]*cachedPage{},
	}
}

// get returns the page at url if it has been fetched, and asks for a fetch
// when it is missing or old.
func (e *errorPages) get(url string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.pages[url]
	if p == nil {
		p = &cachedPage{}
		e.pages[url] = p
	}
	if !p.fetching && !time.Now().Before(p.next) {
		select {
		case e.requests <- url:
			p.fetching = true
		default: // too many fetches waiting: a later error asks again
		}
	}
	return p.body
}

// run fetches the pages asked for until ctx is done.
func (e *errorPages) run(ctx context.Context) {
	defer close(e.done)
	for {
		select {
		case <-ctx.Done():
			return
		case url := <-e.requests:
			e.fetching.Go(func() { e.fetch(ctx, url) })
		}
	}
}

// wait waits for run and the fetches it started to end.
func (e *errorPages) wait() {
	<-e.done
	e.fetching.Wait()
}

func (e *errorPages) fetch(ctx context.Context, url string) {
	body, err := e.download(ctx, url)
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.pages[url]
	p.fetching = false
	if err != nil {
		p.next = time.Now().Add(errorPageRetry)
		e.log.Warn().Str("url", url).Err(err).Msg("app error page not fetched; the router's own page is used")
		return
	}
	p.body, p.next = body, time.Now().Add(errorPageTTL)
}

func (e *errorPages) download(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxErrorPageSize+1))
	if err != nil {
		return nil, err
	}
	if len(body) > MaxErrorPageSize {
		return nil, fmt.Errorf("page larger than %d bytes", MaxErrorPageSize)
	}
	return body, nil
}
