package routing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// Error is a response the router makes itself instead of a container's.
// Code is stable: it is sent in the X-Sluice-Error header and written in the
// access log, for users and operators to recognise. docs/errors.md lists
// them.
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error // the cause, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Code, e.Err)
	}
	return e.Code
}

func (e *Error) Unwrap() error { return e.Err }

// StatusClientClosedRequest is logged when the client went away before the
// answer; nothing is sent.
const StatusClientClosedRequest = 499

// The router's own answers that do not depend on a container's failure.
var (
	ErrMissingHost    = &Error{Status: http.StatusBadRequest, Code: "missing_host", Message: "The request names no host."}
	ErrUnknownHost    = &Error{Status: http.StatusNotFound, Code: "unknown_host", Message: "No app is served at this address."}
	ErrNoContainer    = &Error{Status: http.StatusServiceUnavailable, Code: "no_container", Message: "This app has no running container."}
	ErrQueueFull      = &Error{Status: http.StatusServiceUnavailable, Code: "queue_full", Message: "This app has too many requests waiting; try again shortly."}
	ErrQueueTimeout   = &Error{Status: http.StatusGatewayTimeout, Code: "queue_timeout", Message: "This app was too busy to take the request in time."}
	ErrBodyTooLarge   = &Error{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large", Message: "The request body is too large."}
	ErrMisdirected    = &Error{Status: http.StatusMisdirectedRequest, Code: "misdirected", Message: "This connection was opened for another app (TLS server name and Host differ)."}
	ErrHeaderTooLarge = &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Code: "header_too_large", Message: "The request headers are too large."}
)

// unreachableError is the failure to connect to every container tried.
type unreachableError struct {
	tried int
	err   error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("no connection to any of %d containers, last: %v", e.tried, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// errClientIdle marks the failure of an exchange whose client sent or took
// no byte within the idle timeout.
var errClientIdle = errors.New("the client sent or took nothing within the idle timeout")

// clientTimeout is the router's answer to a client that stalled.
func clientTimeout(err error) *Error {
	return &Error{Status: http.StatusRequestTimeout, Code: "client_timeout", Message: "The request stalled: nothing was sent or taken within the idle timeout.", Err: err}
}

// upstreamError maps a failure to proxy a request to a container, before the
// response started, to the router's answer. It is the one place where such
// failures get a status.
func upstreamError(ctx context.Context, err error) *Error {
	var (
		routerErr   *Error
		unreachable *unreachableError
		tooLarge    *http.MaxBytesError
	)
	switch {
	case errors.Is(err, errClientIdle):
		return clientTimeout(err)
	case errors.As(err, &routerErr):
		return routerErr // decided by the router while retrying (queue_full, …)
	case errors.As(err, &tooLarge):
		return &Error{Status: ErrBodyTooLarge.Status, Code: ErrBodyTooLarge.Code, Message: ErrBodyTooLarge.Message, Err: err}
	case errors.Is(ctx.Err(), context.Canceled):
		return &Error{Status: StatusClientClosedRequest, Code: "client_closed", Message: "The client went away.", Err: err}
	case errors.As(err, &unreachable) || isDialError(err):
		return &Error{Status: http.StatusBadGateway, Code: "container_unreachable", Message: "The app could not be reached.", Err: err}
	case isTimeout(err):
		return &Error{Status: http.StatusGatewayTimeout, Code: "container_timeout", Message: "The app did not answer in time.", Err: err}
	default:
		return &Error{Status: http.StatusBadGateway, Code: "container_error", Message: "The app closed the connection or sent a broken response.", Err: err}
	}
}

// streamError names the failure of a response after its headers were sent:
// it is only logged, as the client already has the status.
func streamError(ctx context.Context, err error) *Error {
	switch {
	case errors.Is(err, errClientIdle):
		return clientTimeout(err)
	case errors.Is(ctx.Err(), context.Canceled):
		return &Error{Status: StatusClientClosedRequest, Code: "client_closed", Message: "The client went away.", Err: err}
	case isTimeout(err):
		return &Error{Status: http.StatusGatewayTimeout, Code: "stream_idle", Message: "No byte either way within the idle timeout.", Err: err}
	default:
		return &Error{Status: http.StatusBadGateway, Code: "container_error", Message: "The app cut the response.", Err: err}
	}
}

// ErrorHeader names the response header that carries an Error's Code.
const ErrorHeader = "X-Sluice-Error"

// errorBody is the JSON form of an error page.
type errorBody struct {
	Status    int    `json:"status"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{.Status}} {{.Text}}</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222">
<h1>{{.Status}} {{.Text}}</h1>
<p>{{.Message}}</p>
<p style="color:#777;font-size:small">code {{.Code}} · request {{.RequestID}}</p>
</body></html>
`))

// writeError sends x.err as a small page, JSON or HTML by the request's
// Accept header; an app's own error page, when it has one fetched, replaces
// the HTML. Nothing is sent for a client that went away.
func (p *Proxy) writeError(w http.ResponseWriter, r *http.Request, x *exchange) {
	e := x.err
	if e.Status == StatusClientClosedRequest {
		return
	}
	h := w.Header()
	x.hsts(h)
	h.Set(ErrorHeader, e.Code)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	body := errorBody{Status: e.Status, Code: e.Code, Message: e.Message, RequestID: x.requestID}
	if wantsJSON(r.Header.Values("Accept")) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(e.Status)
		_ = json.NewEncoder(w).Encode(body)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	if x.app != nil && x.app.Options.ErrorPage != "" {
		if page := p.pages.get(x.app.Options.ErrorPage); page != nil {
			w.WriteHeader(e.Status)
			_, _ = w.Write(page)
			return
		}
	}
	w.WriteHeader(e.Status)
	_ = errorPage.Execute(w, struct {
		errorBody
		Text string
	}{body, http.StatusText(e.Status)})
}

// wantsJSON reports whether an Accept header prefers JSON to HTML.
func wantsJSON(accept []string) bool {
	jsonQ, htmlQ := -1.0, -1.0
	wildQ := -1.0
	for _, field := range accept {
		for part := range strings.SplitSeq(field, ",") {
			media, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			q := 1.0
			if v, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					q = f
				}
			}
			switch {
			case media == "application/json" || strings.HasSuffix(media, "+json"):
				jsonQ = max(jsonQ, q)
			case media == "text/html":
				htmlQ = max(htmlQ, q)
			case media == "*/*" || media == "text/*":
				wildQ = max(wildQ, q)
			}
		}
	}
	if htmlQ < 0 {
		htmlQ = wildQ
	}
	return jsonQ > 0 && jsonQ > htmlQ
}
