#!/usr/bin/env bash
# Runs every module's tests against real servers: starts the test PostgreSQL
# cluster (own data folder and port, so a running `make up` is untouched),
# exports TEST_DATABASE_URL, runs go test -race, and stops the cluster on exit,
# also on failure or Ctrl-C. The tests start their own redis-server processes
# and embedded NATS servers.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

servers=("$ROOT/.ci/servers.sh")
# Quiet, so that go test's closing ok/FAIL lines stay the last of the output.
cleanup() { "${servers[@]}" stop test >/dev/null 2>&1 || warn "stopping the test servers failed"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${servers[@]}" start test pg
ensure_cmd redis-server redis-server
ensure_cmd promtool prometheus # the metrics lint test runs promtool check metrics
"$ROOT/.ci/web.sh" build        # the dashboard the gateway embeds, and playwright-core
"$ROOT/.ci/web.sh" browser      # chromium for the dashboard's browser test
ensure_cmd espeak-ng espeak-ng # the TTS stand-in's speech engine; its tests require it
set -a
# shellcheck source=/dev/null
source "$DATA/test/stack.env"
set +a
export PATH="$TOOLBIN:$PATH"
# The binaries the tests build and spawn (several gateways, the workers under
# kill -9, replay) run with the race detector too, like the tests themselves.
export TEST_BUILD_RACE=1

# Arguments narrow the packages (default: every module of go.work);
# GO_TEST_FLAGS adds flags, e.g. GO_TEST_FLAGS='-run TestX -v'.
if (($# > 0)); then pkgs=("$@"); else mapfile -t pkgs < <(go_packages); fi
read -r -a extra <<<"${GO_TEST_FLAGS:-}"
log "go test -race -count=1 -timeout ${GO_TEST_TIMEOUT:-20m} ${extra[*]} ${pkgs[*]}"
go test -race -count=1 -timeout "${GO_TEST_TIMEOUT:-20m}" "${extra[@]}" "${pkgs[@]}"
