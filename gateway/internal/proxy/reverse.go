package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/problem"
	"github.com/mana/apigw/gateway/internal/usage"
	usagev1 "github.com/mana/apigw/proto/usage/v1"
)

// NewTransport is the pooled client side towards one backend.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // bounded per route by the request's context
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

// bufferPool lends 32 KiB copy buffers to every reverse proxy.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

var buffers = &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

// Headers a backend must never see: the client's credentials.
var credentialHeaders = []string{"X-Api-Key", "Authorization", "Proxy-Authorization", "Cookie"}

// lingering serves an upload through h, then reads and drops what the
// client still sends of it. However the call ended — the backend answered
// before reading all of the upload, failed before reading any, or the
// gateway cut it off — the client, which like most sends the whole body
// before it reads, then reads the answer instead of a reset under its
// upload. JSON bodies were read in full before the call.
func lingering(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if cl := callFrom(r.Context()); cl != nil && cl.body != nil && !cl.noDrain {
			linger(w, r.ContentLength, cl.body.rest())
		}
	})
}

func (e *Edge) newReverseProxy(rt Route, target *url.URL, tr http.RoundTripper) http.Handler {
	upstream := strings.TrimSuffix(target.Path, "/") + rt.UpstreamPath
	return lingering(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path, pr.Out.URL.RawPath = upstream, ""
			pr.Out.Host = target.Host
			pr.SetXForwarded()
			for _, h := range credentialHeaders {
				pr.Out.Header.Del(h)
			}
			// The gateway already answered the client's 100-continue; an
			// interim answer from the backend would commit the response early.
			pr.Out.Header.Del("Expect")
			if cl := callFrom(pr.In.Context()); cl != nil {
				pr.Out.Header.Set("X-Request-Id", cl.requestID)
			}
		},
		Transport:  tr,
		BufferPool: buffers,
		// 0: a response of known length is written as it is copied, not
		// flushed once for its headers and again for its body (a write
		// system call each, on every call); a response of unknown length
		// (streamed audio) and an event stream are flushed after every
		// write by the reverse proxy anyway.
		FlushInterval:  0,
		ModifyResponse: e.modifyResponse,
		ErrorHandler:   e.errorHandler,
	})
}

// modifyResponse runs once the backend's headers are in: it settles the
// charge and makes the usage event durable before any of the body is
// released to the client.
func (e *Edge) modifyResponse(resp *http.Response) error {
	cl := callFrom(resp.Request.Context())
	if cl == nil {
		return errors.New("proxy: response without call state")
	}
	for _, h := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "X-Credits-Remaining", "Ratelimit", "Ratelimit-Policy", "Set-Cookie"} {
		resp.Header.Del(h)
	}
	served := resp.StatusCode >= 200 && resp.StatusCode < 300
	units := int64(0)
	if served {
		units = cl.units
		if cl.route.Settle != nil {
			actual, err := cl.route.Settle(resp)
			if err != nil {
				return errBadBackendAnswer{err}
			}
			// Never charge above the hold: the hold is what the balance
			// covered, so the key cannot be overdrawn.
			units = min(actual, cl.units)
		}
	}
	credits := int64(0)
	if served {
		credits = cl.op.Cost(units)
	}
	if err := e.settle(resp.Request.Context(), cl, credits); err != nil {
		return err
	}
	ev := e.event(cl, resp.StatusCode, units, credits)
	if err := e.publish(resp.Request.Context(), ev); err != nil {
		e.releaseHold(cl)
		switch {
		case credits == 0:
			// Nothing to bill: the answer is served, the event (for the
			// error counts) is lost, which the log says.
			e.logger.WarnContext(resp.Request.Context(), "usage event of a free call not recorded", "event_id", cl.eventID, "err", err)
		case errors.Is(err, usage.ErrUncertain):
			// JetStream may hold the event, and then the ledger charges it:
			// keep the charge in Redis too, so both agree, and refuse.
			return errUnbillable{err: err, uncertain: true}
		default:
			// Never recorded: give the credits back and refuse the call.
			_ = e.settle(resp.Request.Context(), cl, 0)
			return errUnbillable{err: err}
		}
	}
	e.releaseHold(cl)
	if cl.decision.Credits >= 0 {
		resp.Header.Set("X-Credits-Remaining", strconv.FormatInt(cl.decision.Credits, 10))
	}
	return nil
}

// settleBudget bounds the tries of one settlement.
const settleBudget = 10 * time.Second

// settle moves the key's balance from the hold to the final charge. It may
// run twice (charge, then release when the event cannot be made durable).
func (e *Edge) settle(ctx context.Context, cl *call, credits int64) error {
	prev := cl.held
	if cl.settled {
		prev = cl.charged // a second settle moves from the first one's charge
	}
	delta := prev - credits
	cl.settled, cl.charged = true, credits
	if delta == 0 || cl.decision.Credits < 0 {
		return nil
	}
	cl.settles++
	op := cl.eventID + ":" + strconv.Itoa(cl.settles)
	// Retried with backoff: the adjustment is idempotent per op, so a try
	// whose answer was lost cannot move the balance twice.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleBudget)
	defer cancel()
	var err error
	for wait := 50 * time.Millisecond; ; wait *= 2 {
		if err = e.quota.Adjust(ctx, cl.key.ID, cl.decision.Period, op, delta); err == nil {
			break
		}
		e.logger.WarnContext(ctx, "credit settlement failed; retrying", "key_id", cl.key.ID, "event_id", cl.eventID, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
			continue
		}
		e.logger.ErrorContext(ctx, "credit settlement failed; the balance heals on the next rebuild", "key_id", cl.key.ID, "event_id", cl.eventID, "err", err)
		return nil
	}
	cl.decision.Credits += delta
	if cl.holding {
		// What is held from now on is the charge, not the estimate.
		e.holds.Settle(cl.key.ID, cl.eventID, credits)
	}
	return nil
}

// publish waits for the event to become durable, even if the client has
// gone: a call the backend served is billed whatever the client does.
func (e *Edge) publish(ctx context.Context, ev *usagev1.UsageEvent) error {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.PublishTimeout)
	defer cancel()
	pctx, span := e.cfg.Tracer.Start(pctx, "usage.durability_wait", trace.WithAttributes(attribute.String("mana.event_id", ev.EventId)))
	defer span.End()
	err := e.pub.Publish(pctx, ev)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

type errBadBackendAnswer struct{ err error }

func (e errBadBackendAnswer) Error() string { return "backend answer unusable: " + e.err.Error() }

// APIError is what the client is told of it.
func (e errBadBackendAnswer) APIError() *apierr.Error { return errBackendAnswer }

type errUnbillable struct {
	err       error
	uncertain bool // the event may still be stored, and charged
}

func (e errUnbillable) Error() string { return "usage event not durable: " + e.err.Error() }

// APIError is what the client is told of it: whether it may still be charged.
func (e errUnbillable) APIError() *apierr.Error {
	if e.uncertain {
		return usage.ErrUncertain
	}
	return usage.ErrNotDurable
}

// errorHandler answers when the backend could not be reached, timed out, or
// the call could not be billed. Nothing is charged.
func (e *Edge) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	cl := callFrom(r.Context())
	if cl == nil {
		http.Error(w, "bad gateway", http.StatusBadGateway)
		return
	}
	var unbillable errUnbillable
	if !errors.As(err, &unbillable) || !unbillable.uncertain {
		_ = e.settle(r.Context(), cl, 0)
	}
	e.releaseHold(cl)
	answer := e.failure(r, cl, err)
	if answer == nil {
		return // the client went away; nothing to answer
	}
	status := problem.From(answer).Status
	if status == http.StatusBadGateway || status == http.StatusGatewayTimeout {
		ev := e.event(cl, status, 0, 0)
		if perr := e.publish(r.Context(), ev); perr != nil {
			e.logger.WarnContext(r.Context(), "usage event of a failed call not recorded", "event_id", cl.eventID, "err", perr)
		}
		e.logger.WarnContext(r.Context(), "backend call failed", "route", cl.route.Path, "key_id", cl.key.ID, "request_id", cl.requestID, "status", status, "err", err)
	}
	if cl.decision.Credits >= 0 {
		w.Header().Set("X-Credits-Remaining", strconv.FormatInt(cl.decision.Credits, 10))
	}
	_ = problem.Write(cl.ec, answer)
	// A client too slow to send, and one of a gateway that stops, is not
	// waited for (see lingering).
	cl.noDrain = status == http.StatusRequestTimeout || w.Header().Get("Connection") == "close"
}

// failure is what the client is told of a call the reverse proxy could not
// complete, nil if the client went away: the body's fault before the
// backend's.
func (e *Edge) failure(r *http.Request, cl *call, err error) error {
	var mbe *http.MaxBytesError
	var unbillable errUnbillable
	var badAnswer errBadBackendAnswer
	readErr := cl.body.readErr()
	switch {
	case errors.As(err, &mbe):
		return errBodyTooLarge
	case errors.Is(err, errUploadOverDeclared):
		return errUploadOverDeclared
	case errors.Is(readErr, errSecondFile), errors.Is(readErr, errPartMalformed), errors.Is(readErr, errBodyTooSlow):
		// The client stopped sending, or sends slower than MinBodyRate,
		// or sent what no priced upload holds.
		return readErr
	case readErr != nil && r.Context().Err() == nil:
		// The client's upload broke off or its framing is invalid: bad
		// input, not a backend failure.
		return errUploadCutOff
	case errors.As(err, &unbillable):
		return unbillable
	case errors.As(err, &badAnswer):
		return badAnswer
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return errBackendTimeout
	case errors.Is(context.Cause(r.Context()), ErrStopping):
		// The gateway stopped waiting for the call (see ErrStopping).
		return errCallStopped
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return nil
	}
	return errBackendUnreachable
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
