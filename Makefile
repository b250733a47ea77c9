# Mana API Gateway — developer entry points. `make help` lists them.
# The work is done by the scripts in .ci/; they install what is missing
# (apt-get for PostgreSQL, Redis, protoc; `go install` into .data/bin for
# nats-server, staticcheck, protoc-gen-go) and keep all state in .data/.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

STACK := .ci/stack.sh
PKGS = $(shell go list -m -f '{{.Dir}}' | sed 's|^$(CURDIR)/|./|; s|$$|/...|')

.PHONY: help run up down status test lint fuzz shellcheck build migrate proto bench bench-smoke \
	up-cluster capacity replay reconcile audit-verify events servers servers-stop compose-check rules clean distclean

help: ## list the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

run: ## start servers and every binary in the foreground; Ctrl-C stops it all
	@$(STACK) run

up: ## start the same stack in the background; returns once the gateway is ready
	@$(STACK) up

up-cluster: ## the stack scaled out: 3 nats-servers (USAGE at R3), a Redis Cluster of 3 masters, 2 gateways behind nginx on :3030
	@.ci/cluster.sh up

down: ## stop what `make up` started (binaries, then PostgreSQL, Redis, NATS)
	@$(STACK) down

status: ## show what runs
	@$(STACK) status

test: lint ## lint, then go test -race over every module against real servers
	@.ci/test.sh

fuzz: ## run every fuzz target for FUZZTIME (1m; FUZZTIME=10m for the long run); FUZZ_SAVE=1 keeps the corpus in testdata/fuzz
	@.ci/fuzz.sh

lint: ## go vet and staticcheck over every module of go.work
	@.ci/lint.sh

shellcheck: ## shellcheck the .ci scripts (installs shellcheck with apt-get)
	@source .ci/lib.sh && ensure_cmd shellcheck shellcheck
	shellcheck -x .ci/run .ci/*.sh

build: ## build every binary into bin/
	@$(STACK) build

migrate: ## apply the database migrations to the dev database (starts the servers)
	@$(STACK) exec go run ./gateway/cmd/gateway migrate

proto: ## regenerate proto/usage/v1/usage.pb.go (protoc + protoc-gen-go v1.36.12)
	@.ci/proto.sh

bench: ## gateway vs direct, nginx and a bare Go proxy, plus the pipeline (~12 min); CLUSTER=1 adds the cluster stack beside it; writes docs/benchmarks.md
	@.ci/bench.sh full

bench-smoke: ## the same harness with tiny durations (seconds), to check it still works (CLUSTER=1 too); writes .data/bench/smoke.md
	@.ci/bench.sh smoke

capacity: ## recompute the capacity model of docs/scaling.md from docs/benchmarks.md (services/cmd/capacity)
	@go run ./services/cmd/capacity -write docs/scaling.md docs/benchmarks.md

replay: build ## verify the aggregates against the USAGE stream (bin/aggregator replay; ARGS=--from-start by default)
	@$(STACK) exec bin/aggregator replay $(or $(ARGS),--from-start)

audit-verify: build ## check the audit trail's hash chain (bin/gateway audit-verify): a removed or edited row fails
	@$(STACK) exec bin/gateway audit-verify

reconcile: build ## compare the Redis balances of recently active keys with the ledger, correct drift, print a table (bin/gateway reconcile)
	@$(STACK) exec bin/gateway reconcile

events: build ## follow the usage events as JSON (bin/aggregator tail; ARGS=--from-start for the history)
	@$(STACK) exec bin/aggregator tail $(ARGS)

servers: ## start only PostgreSQL, Redis and NATS for development (.data/stack.env)
	@.ci/servers.sh start dev

servers-stop: ## stop the development servers
	@.ci/servers.sh stop dev

rules: ## promtool check rules and test rules on deploy/prometheus (make test runs them too)
	@source .ci/lib.sh && ensure_cmd promtool prometheus
	cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts_test.yml

compose-check: ## validate compose.yaml with `docker compose config` (builds the compose plugin if missing)
	@.ci/compose-check.sh

clean: ## stop everything; remove bin/, test data and logs (keeps the dev database and tools)
	@$(STACK) down
	@.ci/servers.sh stop test
	rm -rf bin .data/test .data/logs

distclean: clean ## also remove the dev data and the tools in .data/
	rm -rf .data /tmp/mana-$$(printf '%s' "$(CURDIR)" | sha1sum | cut -c1-10)
