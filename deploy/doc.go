// Package deploy holds what runs beside the binaries — the Prometheus alert
// rules (prometheus/), the Grafana dashboard and its provisioning
// (grafana/) — and the checks that keep them true to the code: every PromQL
// expression parses, and every metric it names is one the binaries export.
package deploy
