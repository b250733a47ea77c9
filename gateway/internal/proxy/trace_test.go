package proxy_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestOneCallIsOneTrace: with an in-process span recorder as the collector,
// a search call that arrives with a W3C traceparent makes a server span in
// the caller's trace — with the key ID (never the secret), route and
// decision — and child spans for the Redis decision, the backend call and
// the durability wait; the backend receives a traceparent of the backend
// span, and the usage event carries the trace ID.
func TestOneCallIsOneTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	ev := newEnv(t, "capture", "capture", "capture", withTracer(tp))
	secret, k := ev.key("free")
	const caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	resp, body := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"quantum computing"}`, "traceparent", caller)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	evs := ev.events()
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	if evs[0].TraceId != traceID {
		t.Fatalf("event trace_id %q, want %q", evs[0].TraceId, traceID)
	}

	// The server span ends once the handler returns, which may be just
	// after the client has read the answer.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(names(rec.Ended()), "POST /v1/search") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = s
		if s.SpanContext().TraceID().String() != traceID {
			t.Errorf("span %s in trace %s, want the caller's %s", s.Name(), s.SpanContext().TraceID(), traceID)
		}
		for _, a := range s.Attributes() {
			if strings.Contains(a.Value.String(), secret) {
				t.Errorf("span %s carries the secret in %s", s.Name(), a.Key)
			}
		}
	}
	root, ok := spans["POST /v1/search"]
	if !ok {
		t.Fatalf("no server span; spans: %v", names(rec.Ended()))
	}
	if root.Parent().SpanID().String() != "00f067aa0ba902b7" || root.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span's parent %s kind %v, want the caller's span", root.Parent().SpanID(), root.SpanKind())
	}
	want := map[attribute.Key]string{"mana.key_id": k.ID, "mana.decision": "ok", "http.route": "/v1/search", "http.response.status_code": "200"}
	for _, a := range root.Attributes() {
		if w, ok := want[a.Key]; ok {
			if a.Value.String() != w {
				t.Errorf("server span %s = %q, want %q", a.Key, a.Value.String(), w)
			}
			delete(want, a.Key)
		}
	}
	if len(want) > 0 {
		t.Errorf("server span lacks %v", want)
	}
	for _, name := range []string{"redis.acquire", "backend /v1/search", "usage.durability_wait"} {
		s, ok := spans[name]
		if !ok {
			t.Errorf("no %s span; spans: %v", name, names(rec.Ended()))
			continue
		}
		if s.Parent().SpanID() != root.SpanContext().SpanID() {
			t.Errorf("%s's parent is %s, want the server span %s", name, s.Parent().SpanID(), root.SpanContext().SpanID())
		}
	}
	backend := spans["backend /v1/search"]
	ev.capture.mu.Lock()
	got := ev.capture.headers[len(ev.capture.headers)-1].Get("traceparent")
	ev.capture.mu.Unlock()
	if backend != nil {
		if wantTP := "00-" + traceID + "-" + backend.SpanContext().SpanID().String() + "-01"; got != wantTP {
			t.Errorf("backend got traceparent %q, want %q", got, wantTP)
		}
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}
