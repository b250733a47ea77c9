#!/usr/bin/env bash
# The dashboard's front end (web/).
#
# usage: .ci/web.sh build     npm ci (from web/package-lock.json; skipped when
#                             node_modules already matches the lock file), then
#                             copy the page and Chart.js into the gateway's
#                             embed folder gateway/internal/dashboard/dist/
#        .ci/web.sh browser   make sure Debian's chromium is installed (the
#                             browser tests of gateway/e2e drive it)
# Installs nodejs and npm with apt-get when node is missing.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT/web"

build() {
	ensure_cmd node nodejs
	ensure_cmd npm npm
	local stamp=node_modules/.installed-lock
	if ! cmp -s package-lock.json "$stamp"; then
		log "npm ci in web/ (the versions of web/package-lock.json)"
		npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2
		cp package-lock.json "$stamp"
	fi
	node build.mjs >&2
}

case ${1:-} in
build) build ;;
browser) ensure_cmd chromium chromium ;;
*) die "usage: $0 build|browser" ;;
esac
