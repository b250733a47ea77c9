# shellcheck shell=bash
# Helpers shared by the .ci/ scripts. Source it; it sets ROOT (the repository
# root) and defines small functions. It runs nothing on its own.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
DATA="$ROOT/.data"
TOOLBIN="$DATA/bin"
# shellcheck source=.ci/ports.sh
source "$ROOT/.ci/ports.sh"

# Pinned tool versions (Go modules, built into .data/bin); used by the scripts
# that source this file.
# shellcheck disable=SC2034
NATS_SERVER_VERSION=v2.15.2
# shellcheck disable=SC2034
STATICCHECK_VERSION=v0.8.2 # staticcheck 2026.2.x
# shellcheck disable=SC2034
PROTOC_GEN_GO_VERSION=v1.36.12

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# as_root runs a command as root: directly when we are root, else via sudo.
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $* (install sudo or run as root)"
	fi
}

# apt_ensure installs the Debian packages that are not installed yet; it runs
# `apt-get update` only when something is missing.
apt_ensure() {
	local p missing=()
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	((${#missing[@]} == 0)) && return 0
	command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
	log "installing ${missing[*]} with apt-get"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_cmd CMD PACKAGE: installs PACKAGE when CMD is not on PATH.
ensure_cmd() {
	command -v "$1" >/dev/null 2>&1 || apt_ensure "$2"
}

# go_tool NAME MODULE PACKAGE VERSION: makes sure .data/bin/NAME is PACKAGE
# built from MODULE@VERSION (go install), and prints its path.
go_tool() {
	local name=$1 module=$2 pkg=$3 version=$4 bin="$TOOLBIN/$1" have=""
	command -v go >/dev/null 2>&1 || die "go is not installed (Go 1.26 is required)"
	if [[ -x $bin ]]; then
		have=$(go version -m "$bin" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }')
	fi
	if [[ $have != "$version" ]]; then
		log "building $name $version into .data/bin (go install)"
		mkdir -p "$TOOLBIN"
		(cd / && GOWORK=off GOBIN="$TOOLBIN" GOFLAGS=-buildvcs=false go install "$pkg@$version") >&2
	fi
	printf '%s\n' "$bin"
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port PREFERRED...: prints the first port of the list that is free; when
# all are taken, a free one from 20000-29999 (tried in order from a hash).
free_port() {
	local p
	for p in "$@"; do
		if ! port_open "$p"; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	for ((p = 20000 + (RANDOM % 5000); p < 30000; p++)); do
		if ! port_open "$p"; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	return 1
}

# pid_alive PIDFILE [NAME]: true when the pid in PIDFILE runs (and, with NAME,
# its command name starts with NAME, which guards against reused pids).
pid_alive() {
	local pid comm
	[[ -s $1 ]] || return 1
	pid=$(head -n1 "$1" | tr -d '[:space:]')
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -n ${2:-} ]]; then
		comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
		[[ $comm == "${2:0:15}"* ]] || return 1
	fi
}

# stop_pidfile PIDFILE LABEL [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds
# (default 20), then SIGKILL; removes the pid file.
stop_pidfile() {
	local file=$1 label=$2 timeout=${3:-20} pid i
	if [[ ! -s $file ]]; then
		rm -f "$file"
		return 0
	fi
	pid=$(head -n1 "$file" | tr -d '[:space:]')
	if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
		log "stopping $label (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < timeout * 10; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			warn "$label did not stop in ${timeout}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$file"
}

# http_status URL: prints the HTTP status code of a GET (000 when unreachable).
http_status() {
	curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# go_packages: the ./dir/... pattern of every module in go.work, for go vet,
# staticcheck and go test run from the root in workspace mode.
go_packages() {
	local dir
	(cd "$ROOT" && go list -m -f '{{.Dir}}') | while read -r dir; do
		printf './%s/...\n' "${dir#"$ROOT"/}"
	done
}
