// Package promcheck reads the PromQL expressions of the alert rules and of
// the Grafana dashboards, parses each with Prometheus's own parser, and
// compares the metric names they use with the names a /metrics exposition
// holds, so that rules and panels cannot drift from the code.
package promcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// Expr is one PromQL expression and where it was found.
type Expr struct {
	Where string // e.g. "alerts.yml: ManaSpoolGrowing", "mana.json: panel Spool bytes"
	Query string
}

// Synthetic are the series Prometheus itself makes, not any binary.
var Synthetic = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}

// ruleFile is the part of a Prometheus rule file the check reads.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// Rule is one alerting or recording rule.
type Rule struct {
	Name        string
	Expr        string
	Annotations map[string]string
}

// Rules reads the rules of a Prometheus rule file.
func Rules(path string) ([]Rule, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var out []Rule
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				name = r.Record
			}
			out = append(out, Rule{Name: name, Expr: r.Expr, Annotations: r.Annotations})
		}
	}
	return out, nil
}

// RuleExprs are the expressions of the rules in path.
func RuleExprs(path string) ([]Expr, error) {
	rules, err := Rules(path)
	if err != nil {
		return nil, err
	}
	out := make([]Expr, 0, len(rules))
	for _, r := range rules {
		out = append(out, Expr{Where: filepath.Base(path) + ": " + r.Name, Query: r.Expr})
	}
	return out, nil
}

// panel is the part of a Grafana panel the check reads; rows nest panels.
type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

type dashboard struct {
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// Grafana's built-in interval variables, replaced by a duration for parsing.
var grafanaIntervals = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`)

// labelValues is Grafana's label_values(metric, label) variable query.
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// DashboardExprs are the expressions of a Grafana dashboard's panels and of
// its query variables, with Grafana's variables replaced so that Prometheus's
// parser reads them: $__rate_interval and friends by 5m, the dashboard's own
// variables by a plain value.
func DashboardExprs(path string) ([]Expr, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read dashboard: %w", err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	// Longest first, so $instance_x is not read as $instance.
	sort.Slice(vars, func(i, j int) bool { return len(vars[i]) > len(vars[j]) })
	subst := func(q string) string {
		q = grafanaIntervals.ReplaceAllString(q, "5m")
		for _, v := range vars {
			q = strings.ReplaceAll(q, "${"+v+"}", "value")
			q = strings.ReplaceAll(q, "$"+v, "value")
		}
		return q
	}
	base := filepath.Base(path)
	var out []Expr
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		if sel := labelValues.FindStringSubmatch(q); sel != nil {
			q = sel[1]
		}
		if q != "" {
			out = append(out, Expr{Where: base + ": variable " + v.Name, Query: subst(q)})
		}
	}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				out = append(out, Expr{Where: fmt.Sprintf("%s: panel %q %s", base, p.Title, t.RefID), Query: subst(t.Expr)})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out, nil
}

// MetricNames parses q with Prometheus's parser and returns the metric
// names of its selectors. A selector without a fixed name (only a regex on
// __name__, or none) is an error: the check could not vouch for it.
func MetricNames(q string) ([]string, error) {
	if strings.TrimSpace(q) == "" {
		return nil, errors.New("empty expression")
	}
	e, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		return nil, err
	}
	var names []string
	var errs []error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			errs = append(errs, fmt.Errorf("selector %s has no metric name", vs))
			return nil
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
		return nil
	})
	if len(names) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("uses no metric"))
	}
	return names, errors.Join(errs...)
}

// Exported reads a text exposition (a /metrics body) and returns the names
// of the series it may hold: each family's name, and for histograms and
// summaries the _bucket, _sum and _count series too.
func Exported(r io.Reader) (map[string]bool, error) {
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse exposition: %w", err)
	}
	out := map[string]bool{}
	for name, f := range fams {
		out[name] = true
		switch f.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case "SUMMARY":
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out, nil
}

// Check parses every expression and reports, joined, each that does not
// parse and each metric name that is neither in exported nor synthetic.
func Check(exprs []Expr, exported map[string]bool) error {
	var errs []error
	for _, e := range exprs {
		names, err := MetricNames(e.Query)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.Where, err))
		}
		for _, n := range names {
			if !exported[n] && !slices.Contains(Synthetic, n) {
				errs = append(errs, fmt.Errorf("%s: metric %s is not exported by any binary", e.Where, n))
			}
		}
	}
	return errors.Join(errs...)
}
