package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/mana/apigw/deploy/promcheck"
)

// root is the repository root: this package's folder is deploy/.
const root = ".."

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (Debian package prometheus; .ci/test.sh installs it): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join(root, "deploy", "prometheus")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRulesPassPromtool: `promtool check rules` accepts the alert rules, and
// `promtool test rules` passes the unit tests that show each alert firing on
// a synthetic series of trouble and quiet on a healthy one.
func TestRulesPassPromtool(t *testing.T) {
	rules, err := promcheck.Rules(filepath.Join(root, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	out := promtool(t, "check", "rules", "alerts.yml")
	if want := "SUCCESS: " + strconv.Itoa(len(rules)) + " rules found"; !strings.Contains(out, want) {
		t.Fatalf("promtool check rules: %q, want %q", out, want)
	}
	if out := promtool(t, "test", "rules", "alerts_test.yml"); !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %s", out)
	}
}

// alertTests is the part of a promtool test file this check reads.
type alertTests struct {
	Tests []struct {
		Name  string `yaml:"name"`
		Cases []struct {
			Alert  string `yaml:"alertname"`
			Alerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestEveryAlertIsTestedFiringAndQuiet: each alert of the rules has a case in
// the promtool tests where it fires and one where it does not.
func TestEveryAlertIsTestedFiringAndQuiet(t *testing.T) {
	rules, err := promcheck.Rules(filepath.Join(root, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, AlertTestsFile))
	if err != nil {
		t.Fatal(err)
	}
	var at alertTests
	if err := yaml.Unmarshal(b, &at); err != nil {
		t.Fatal(err)
	}
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range at.Tests {
		for _, c := range tc.Cases {
			if len(c.Alerts) > 0 {
				firing[c.Alert] = true
			} else {
				quiet[c.Alert] = true
			}
		}
	}
	for _, r := range rules {
		if !firing[r.Name] || !quiet[r.Name] {
			t.Errorf("%s: tested firing %v, quiet %v; want both", r.Name, firing[r.Name], quiet[r.Name])
		}
	}
}

var heading = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*$`)

// anchors are GitHub's anchors of the Markdown headings of path.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	fence := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fence = !fence
		}
		m := heading.FindStringSubmatch(line)
		if fence || m == nil {
			continue
		}
		var slug strings.Builder
		for _, r := range strings.ToLower(m[1]) {
			switch {
			case r == ' ' || r == '-':
				slug.WriteRune('-')
			case r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				slug.WriteRune(r)
			}
		}
		out[slug.String()] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEveryAlertHasARunbook: each alert carries a summary, a description and
// a runbook_url that points at a heading of docs/operations.md.
func TestEveryAlertHasARunbook(t *testing.T) {
	rules, err := promcheck.Rules(filepath.Join(root, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	have := anchors(t, filepath.Join(root, RunbookFile))
	for _, r := range rules {
		a := r.Annotations
		if a["summary"] == "" || a["description"] == "" {
			t.Errorf("%s: no summary or description", r.Name)
		}
		file, anchor, ok := strings.Cut(a["runbook_url"], "#")
		if !ok || file != RunbookFile || !have[anchor] {
			t.Errorf("%s: runbook_url %q is no heading of %s", r.Name, a["runbook_url"], RunbookFile)
		}
	}
}

// TestEveryExpressionParses: every expression of the rules and dashboards
// parses with Prometheus's parser and names its metrics.
func TestEveryExpressionParses(t *testing.T) {
	exprs, err := Exprs(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(exprs) < 30 {
		t.Fatalf("only %d expressions found", len(exprs))
	}
	for _, e := range exprs {
		if _, err := promcheck.MetricNames(e.Query); err != nil {
			t.Errorf("%s: %v\n%s", e.Where, err, e.Query)
		}
	}
}

// TestComposePrometheusConfigPassesPromtool: the Prometheus configuration of
// the compose monitoring profile passes `promtool check config`, with its
// rule file (mounted at /etc/prometheus in the container) read from here.
func TestComposePrometheusConfigPassesPromtool(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	alerts, err := filepath.Abs(filepath.Join(root, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.ReplaceAll(string(b), "/etc/prometheus/alerts.yml", alerts)
	if conf == string(b) {
		t.Fatal("prometheus.yml does not load /etc/prometheus/alerts.yml")
	}
	path := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out := promtool(t, "check", "config", path)
	for _, want := range []string{"SUCCESS: 1 rule files found", "SUCCESS: " + strconv.Itoa(len(mustRules(t))) + " rules found"} {
		if !strings.Contains(out, want) {
			t.Errorf("promtool check config: no %q in\n%s", want, out)
		}
	}
}

func mustRules(t *testing.T) []promcheck.Rule {
	t.Helper()
	rules, err := promcheck.Rules(filepath.Join(root, AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}
