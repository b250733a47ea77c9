#!/usr/bin/env bash
# go vet and staticcheck over every module of go.work (run from the root in
# workspace mode). staticcheck is built into .data/bin at a pinned version.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

"$ROOT/.ci/web.sh" build # go vet compiles the gateway, which embeds the dashboard
mapfile -t pkgs < <(go_packages)
((${#pkgs[@]} > 0)) || die "go.work lists no module"
staticcheck=$(go_tool staticcheck honnef.co/go/tools honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION")

log "go vet ${pkgs[*]}"
go vet "${pkgs[@]}"
log "staticcheck ${pkgs[*]}"
"$staticcheck" "${pkgs[@]}"
log "lint ok"
