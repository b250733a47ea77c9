package deploy

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/mana/apigw/deploy/promcheck"
)

// Where the monitoring files live, relative to the repository root.
const (
	AlertsFile     = "deploy/prometheus/alerts.yml"
	AlertTestsFile = "deploy/prometheus/alerts_test.yml"
	DashboardGlob  = "deploy/grafana/dashboards/*.json"
	RunbookFile    = "docs/operations.md"
)

// Planned are metrics the rules and the dashboard use before a binary
// exports them, with what will export them. metriccheck accepts them while
// they are missing and refuses them once exported, so that this list only
// ever shrinks.
var Planned = map[string]string{
	"gateway_reconcile_credits_corrected_total": "the gateway's reconciler: a counter vector, absent until a pass corrects a key",
}

// Exprs are the PromQL expressions of the alert rules and of every
// dashboard under the repository root.
func Exprs(root string) ([]promcheck.Expr, error) {
	exprs, err := promcheck.RuleExprs(filepath.Join(root, AlertsFile))
	if err != nil {
		return nil, err
	}
	boards, err := filepath.Glob(filepath.Join(root, DashboardGlob))
	if err != nil {
		return nil, fmt.Errorf("dashboards: %w", err)
	}
	if len(boards) == 0 {
		return nil, errors.New("no dashboard under " + DashboardGlob)
	}
	for _, b := range boards {
		d, err := promcheck.DashboardExprs(b)
		if err != nil {
			return nil, err
		}
		exprs = append(exprs, d...)
	}
	return exprs, nil
}
