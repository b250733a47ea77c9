package promcheck

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		q       string
		want    []string
		wantErr string
	}{
		{q: `rate(a_total[5m]) / rate(b_total[5m])`, want: []string{"a_total", "b_total"}},
		{q: `histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{job="g"}[5m]))) > 0.1`, want: []string{"x_seconds_bucket"}},
		{q: `{__name__="c"} == 0 or c`, want: []string{"c"}},
		{q: `time() - d > 300`, want: []string{"d"}},
		{q: `{__name__=~"billing_.*"}`, wantErr: "no metric name"},
		{q: `vector(1)`, wantErr: "uses no metric"},
		{q: `sum(rate(a[5m])`, wantErr: "unclosed"},
		{q: ` `, wantErr: "empty"},
	} {
		t.Run(tc.q, func(t *testing.T) {
			got, err := MetricNames(tc.q)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("%v %v, want %v", got, err, tc.want)
			}
		})
	}
}

const exposition = `# HELP gateway_x_seconds A histogram.
# TYPE gateway_x_seconds histogram
gateway_x_seconds_bucket{le="0.1"} 1
gateway_x_seconds_bucket{le="+Inf"} 1
gateway_x_seconds_sum 0.05
gateway_x_seconds_count 1
# HELP gateway_y_total A counter.
# TYPE gateway_y_total counter
gateway_y_total 3
`

// TestCheckRefusesAnUnknownMetric: a name the exposition lacks is reported
// with where it was used; the histogram's series and Prometheus's own up pass.
func TestCheckRefusesAnUnknownMetric(t *testing.T) {
	exported, err := Exported(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	ok := []Expr{
		{"r1", `histogram_quantile(0.99, rate(gateway_x_seconds_bucket[5m]))`},
		{"r2", `rate(gateway_x_seconds_sum[5m]) / rate(gateway_x_seconds_count[5m])`},
		{"r3", `increase(gateway_y_total[1h]) > 0 and up == 1`},
	}
	if err := Check(ok, exported); err != nil {
		t.Fatalf("known names refused: %v", err)
	}
	err = Check(append(ok, Expr{"alerts.yml: Renamed", `gateway_y_renamed_total > 0`}), exported)
	if err == nil || !strings.Contains(err.Error(), "alerts.yml: Renamed: metric gateway_y_renamed_total is not exported") {
		t.Fatalf("unknown name: %v", err)
	}
	if err := Check([]Expr{{"bad", `rate(gateway_y_total[5m]`}}, exported); err == nil {
		t.Fatal("an expression that does not parse passed")
	}
}

// TestDashboardExprs: panels in rows, targets and query variables are all
// read, with Grafana's variables replaced by what the parser accepts.
func TestDashboardExprs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.json")
	board := `{"templating":{"list":[
	  {"name":"instance","type":"query","query":{"query":"label_values(gateway_y_total, instance)"}},
	  {"name":"ds","type":"datasource","query":"prometheus"}]},
	 "panels":[
	  {"type":"row","title":"r","panels":[{"title":"inner","targets":[{"refId":"A","expr":"rate(gateway_y_total{instance=~\"$instance\"}[$__rate_interval])"}]}]},
	  {"title":"outer","targets":[{"refId":"A","expr":"sum(rate(gateway_x_seconds_count{instance=~\"${instance}\"}[$__interval]))"}]}]}`
	if err := os.WriteFile(path, []byte(board), 0o600); err != nil {
		t.Fatal(err)
	}
	exprs, err := DashboardExprs(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Expr{
		{`d.json: variable instance`, `gateway_y_total`},
		{`d.json: panel "inner" A`, `rate(gateway_y_total{instance=~"value"}[5m])`},
		{`d.json: panel "outer" A`, `sum(rate(gateway_x_seconds_count{instance=~"value"}[5m]))`},
	}
	if !slices.Equal(exprs, want) {
		t.Fatalf("got %q\nwant %q", exprs, want)
	}
	exported, _ := Exported(strings.NewReader(exposition))
	if err := Check(exprs, exported); err != nil {
		t.Fatal(err)
	}
}
