#!/usr/bin/env bash
# Runs every fuzz target of every module for FUZZTIME each (default 1m;
# FUZZTIME=10m for the long run). `make test` replays only the seeds and the
# committed corpus (testdata/fuzz); this is the separate, long run.
# FUZZ_SAVE=1 copies what the fuzzer found interesting into each target's
# testdata/fuzz/<Target>/ so that it can be committed as corpus.
# FUZZ_MATCH narrows the targets (a regular expression on their names).
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

fuzztime=${FUZZTIME:-1m}
match=${FUZZ_MATCH:-.}
cache=$(go env GOCACHE)/fuzz
mapfile -t pkgs < <(go_packages)
found=0
failed=()
# go list: the packages that have a file with a fuzz target.
while read -r imp dir; do
	while read -r target; do
		[[ $target =~ ^Fuzz ]] || continue
		[[ $target =~ $match ]] || continue
		found=$((found + 1))
		log "fuzz $target ($imp) for $fuzztime"
		if ! (cd "$dir" && go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" .); then
			failed+=("$imp $target")
		fi
		if [[ ${FUZZ_SAVE:-} == 1 && -d $cache/$imp/$target ]]; then
			mkdir -p "$dir/testdata/fuzz/$target"
			cp -n "$cache/$imp/$target"/* "$dir/testdata/fuzz/$target/" 2>/dev/null || true
		fi
	done < <( (cd "$dir" && go test -list '^Fuzz' .) | grep '^Fuzz' || true)
done < <(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' "${pkgs[@]}" | while read -r imp dir; do
	grep -lq 'func Fuzz' "$dir"/*_test.go 2>/dev/null && echo "$imp $dir"
done)
((found > 0)) || die "no fuzz target found"
if ((${#failed[@]} > 0)); then
	printf '  failed: %s\n' "${failed[@]}" >&2
	die "${#failed[@]} of $found fuzz targets found a failure (the input is in the package's testdata/fuzz)"
fi
log "fuzz ok: $found targets, $fuzztime each"
