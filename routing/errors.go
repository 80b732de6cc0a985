package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// Error is a response the router makes itself instead of a container's.
// Code is stable: it is sent in the X-Sluice-Error header and written in the
// access log, for users and operators to recognise.
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

// The router's own answers. docs/errors.md lists them.
var (
	ErrMissingHost = &Error{Status: http.StatusBadRequest, Code: "missing_host", Message: "The request names no host."}
	ErrUnknownHost = &Error{Status: http.StatusNotFound, Code: "unknown_host", Message: "No app is served at this address."}
	ErrNoContainer = &Error{Status: http.StatusServiceUnavailable, Code: "no_container", Message: "This app has no running container."}
)

// upstreamError maps a failure to proxy a request to a container to the
// router's answer. It is the one place where such failures get a status.
func upstreamError(ctx context.Context, err error) *Error {
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return &Error{Status: StatusClientClosedRequest, Code: "client_closed", Message: "The client went away.", Err: err}
	case errors.As(err, &ne) && ne.Timeout():
		return &Error{Status: http.StatusGatewayTimeout, Code: "container_timeout", Message: "The app did not answer in time.", Err: err}
	default:
		return &Error{Status: http.StatusBadGateway, Code: "container_unreachable", Message: "The app could not be reached.", Err: err}
	}
}

// ErrorHeader names the response header that carries an Error's Code.
const ErrorHeader = "X-Sluice-Error"

// writeError sends e as a short plain-text page. Nothing is sent for a
// client that went away.
func writeError(w http.ResponseWriter, e *Error) {
	if e.Status == StatusClientClosedRequest {
		return
	}
	h := w.Header()
	h.Set(ErrorHeader, e.Code)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	fmt.Fprintf(w, "%d %s\n%s\ncode: %s\n", e.Status, http.StatusText(e.Status), e.Message, e.Code)
}
