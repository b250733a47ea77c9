package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv"
)

// TestMetricsPassPromtool: after traffic through the gateway (served,
// refused, failed calls), every /metrics of the system — the gateway, the
// billing worker and the aggregator — passes `promtool check metrics`
// without a single lint problem, and shows the hot path's histograms; and
// every metric the alert rules and the Grafana dashboard use (deploy/) is
// one of those the three binaries export.
func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (Debian package prometheus; .ci/test.sh installs it): %v", err)
	}
	s := newStack(t, stackOpts{})
	gw := s.gwURLs[0]
	tok := s.login("user@example.com")
	k := s.createKey(gw, tok, map[string]any{"name": "metrics", "tier": "pro"})
	key := map[string]string{"X-API-Key": k.Key}
	served := int64(0)
	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/search", `{"query":"quantum computing"}`, 200},
		{"POST", "/v1/search", `{"query":"quantum computing"}`, 200},
		{"POST", "/v1/tts/synthesize", `{"text":"hello","voice":"en-US-1"}`, 200},
		{"GET", "/v1/stt/models", "", 200},
		{"GET", "/v1/key", "", 200},
		{"POST", "/v1/search", `{"query":`, 400},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		resp, b := s.do(c.method, gw+c.path, body, key)
		if resp.StatusCode != c.status {
			t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, resp.StatusCode, b, c.status)
		}
		if c.status == 200 && c.path != "/v1/key" {
			served++
		}
	}
	if resp, _ := s.do("POST", gw+"/v1/search", `{"query":"a"}`, map[string]string{"X-API-Key": "sk_live_invented"}); resp.StatusCode != 401 {
		t.Fatalf("invented key: %d", resp.StatusCode)
	}
	// The workers have applied the events, so their metrics have moved too.
	eventually(t, "ledger holds the served calls", func() (bool, string) {
		rows, _ := s.ledger(k.ID)
		return rows == served, fmt.Sprintf("%d of %d rows", rows, served)
	})
	scraped := t.TempDir()
	for _, target := range []struct {
		name, url string
		want      []string // series that must be there
	}{
		{"gateway", gw + "/metrics", []string{
			"gateway_http_request_duration_seconds_bucket",
			`gateway_backend_request_duration_seconds_bucket{outcome="2xx",route="/v1/search"`,
			`gateway_quota_decision_duration_seconds_bucket{op="acquire",result="ok"`,
			"gateway_usage_spool_damaged_bytes_total 0",
			`gateway_dependency_up{dependency="redis"} 1`,
			"gateway_usage_spool_limit_bytes ",
		}},
		{"billing-worker", s.billingURL + "/metrics", []string{"billing_consumer_ack_floor_lag_messages "}},
		{"aggregator", s.aggURL + "/metrics", []string{"aggregator_consumer_ack_floor_lag_messages "}},
	} {
		t.Run(target.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, body, err := s.http.Do(ctx, "GET", target.url, nil, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("GET %s: %v %v", target.url, resp, err)
			}
			for _, w := range target.want {
				if !bytes.Contains(body, []byte(w)) {
					t.Errorf("no series %s", w)
				}
			}
			if err := os.WriteFile(filepath.Join(scraped, target.name+".prom"), body, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
			cmd.Stdin = bytes.NewReader(body)
			out, err := cmd.CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Fatalf("promtool check metrics on %s: %v\n%s", target.url, err, strings.TrimSpace(string(out)))
			}
		})
	}
	// Every metric the alert rules and the dashboard use is one of these.
	files, _ := filepath.Glob(filepath.Join(scraped, "*.prom"))
	if len(files) != 3 {
		t.Fatalf("scraped %d of 3 targets", len(files))
	}
	cmd := exec.Command(bin(t, "./deploy/cmd/metriccheck"), append([]string{"-root", testenv.RepoRoot(t)}, files...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the rules or the dashboard use metrics the binaries do not export: %v\n%s", err, out)
	}
	t.Logf("metriccheck: %s", bytes.TrimSpace(out))
}
