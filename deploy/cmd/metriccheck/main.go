// Command metriccheck checks the alert rules and the Grafana dashboards
// against what the binaries export: every PromQL expression must parse, and
// every metric it names must be in one of the /metrics bodies given as files.
//
//	metriccheck -root . gateway.prom billing.prom aggregator.prom
//
// It exits 1 listing each problem, 0 when there is none.
package main

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"

	"github.com/mana/apigw/deploy"
	"github.com/mana/apigw/deploy/promcheck"
)

func main() {
	root := flag.String("root", ".", "the repository root")
	flag.Parse()
	if err := run(*root, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(root string, files []string) error {
	if len(files) == 0 {
		return errors.New("usage: metriccheck [-root DIR] METRICS_FILE")
	}
	exported := map[string]bool{}
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			return err
		}
		names, err := promcheck.Exported(r)
		_ = r.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		for n := range names {
			exported[n] = true
		}
	}
	exprs, err := deploy.Exprs(root)
	if err != nil {
		return err
	}
	known := maps.Clone(exported)
	var errs []error
	for name, why := range deploy.Planned {
		if exported[name] {
			errs = append(errs, fmt.Errorf("%s is exported now: remove it from deploy.Planned", name))
		}
		known[name] = true
		fmt.Fprintf(os.Stderr, "metriccheck: %s accepted unexported: %s\n", name, why)
	}
	if err := errors.Join(append(errs, promcheck.Check(exprs, known))...); err != nil {
		return err
	}
	fmt.Printf("%d expressions checked against %d exported metric names\n", len(exprs), len(exported))
	return nil
}
