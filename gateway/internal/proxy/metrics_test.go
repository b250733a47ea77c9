package proxy_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// histogramCount is the number of observations of the histogram series
// with exactly these labels (0 when there is none).
func histogramCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m.GetLabel(), labels) {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

func matches(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, l := range got {
		if want[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// The backend call and the Redis decisions of the hot path are measured by
// route and outcome, for served, failed, timed-out and unreachable calls.
func TestHotPathHistograms(t *testing.T) {
	reg := prometheus.NewRegistry()
	ev := newEnv(t, "capture", "http://127.0.0.1:1", "capture", withMetrics(reg))
	secret, _ := ev.key("pro")
	backend := func(route, outcome string) uint64 {
		return histogramCount(t, reg, "gateway_backend_request_duration_seconds", map[string]string{"route": route, "outcome": outcome})
	}
	decision := func(op, result string) uint64 {
		return histogramCount(t, reg, "gateway_quota_decision_duration_seconds", map[string]string{"op": op, "result": result})
	}

	for i := 0; i < 3; i++ {
		if resp, b := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`); resp.StatusCode != 200 {
			t.Fatalf("search: %d %s", resp.StatusCode, b)
		}
	}
	ev.capture.status.Store(500)
	if resp, _ := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`); resp.StatusCode != 500 {
		t.Fatalf("500 passthrough: %d", resp.StatusCode)
	}
	ev.capture.status.Store(200)
	ev.capture.delay.Store(1500) // over the route's timeout, capped at 1 s here
	if resp, _ := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"slow"}`); resp.StatusCode != 504 {
		t.Fatalf("slow backend: %d", resp.StatusCode)
	}
	ev.capture.delay.Store(0)
	if resp, _ := ev.do("GET", "/v1/stt/models", secret, "", ""); resp.StatusCode != 502 {
		t.Fatalf("unreachable backend: %d", resp.StatusCode)
	}
	for _, c := range []struct {
		route, outcome string
		want           uint64
	}{
		{"/v1/search", "2xx", 3},
		{"/v1/search", "5xx", 1},
		{"/v1/search", "timeout", 1},
		{"/v1/stt/models", "error", 1},
		{"/v1/search", "error", 0},
	} {
		if got := backend(c.route, c.outcome); got != c.want {
			t.Errorf("backend %s %s: %d observations, want %d", c.route, c.outcome, got, c.want)
		}
	}
	// Six decisions; the 500 and the 504 gave their hold back (two adjusts).
	if got := decision("acquire", "ok"); got != 6 {
		t.Errorf("acquire ok: %d observations, want 6", got)
	}
	if got := decision("adjust", "ok"); got != 2 {
		t.Errorf("adjust ok: %d observations, want 2", got)
	}

	ev.redis.Stop()
	if resp, _ := ev.do("POST", "/v1/search", secret, "application/json", `{"query":"a"}`); resp.StatusCode != 503 {
		t.Fatalf("Redis down: %d", resp.StatusCode)
	}
	if got := decision("acquire", "error"); got != 1 {
		t.Errorf("acquire error: %d observations, want 1", got)
	}
}
