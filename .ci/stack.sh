#!/usr/bin/env bash
# Runs the whole stack on this machine: the servers (.ci/servers.sh dev), then
# the binaries built into bin/, each with the settings of .data/stack.env.
#
# usage: .ci/stack.sh build      build every binary into bin/
#        .ci/stack.sh run        start everything in the foreground; Ctrl-C stops it all
#        .ci/stack.sh up         start everything in the background, return when ready
#        .ci/stack.sh down       stop what `up` (or a killed `run`) started
#        .ci/stack.sh status     what runs
#        .ci/stack.sh exec CMD…  run CMD with the servers up and their settings exported
# STACK_SKIP_BUILD=1 uses bin/ as it is; READY_TIMEOUT (seconds, default 90).
# MONITORING=1 (run, up) also starts Prometheus from Debian's package on
# 127.0.0.1:9090 (59090 if taken; PROMETHEUS_PORTS in .ci/ports.sh), scraping every binary with the alert rules
# of deploy/prometheus loaded; its data lives in .data/prometheus.
# Logs go to .data/logs/<name>.log, pid files to .data/run/<name>.pid.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RUN=$DATA/run
LOGS=$DATA/logs
BIN=$ROOT/bin
READY_TIMEOUT=${READY_TIMEOUT:-90}

# name|package|port (.ci/ports.sh)|health path (empty: a TCP connect is enough). Start order.
APPS=(
	"authdev|./services/cmd/authdev|$AUTHDEV_PORT|"
	"search|./services/cmd/search|$SEARCH_PORT|"
	"stt|./services/cmd/stt|$STT_PORT|"
	"tts|./services/cmd/tts|$TTS_PORT|"
	"webhookdev|./services/cmd/webhookdev|$WEBHOOKDEV_PORT|/health"
	"billing-worker|./billing-worker/cmd/billing-worker|$BILLING_METRICS_PORT|/health"
	"aggregator|./aggregator/cmd/aggregator|$AGGREGATOR_METRICS_PORT|/health"
	"gateway|./gateway/cmd/gateway|$GATEWAY_PORT|/ready"
)

app_field() { # app_field ENTRY INDEX
	local IFS='|'
	# shellcheck disable=SC2206
	local f=($1)
	printf '%s\n' "${f[$2]:-}"
}

build() {
	local e pkgs=()
	for e in "${APPS[@]}"; do pkgs+=("$(app_field "$e" 1)"); done
	"$ROOT/.ci/web.sh" build # the dashboard the gateway embeds
	log "go build -o bin/ ${pkgs[*]}"
	mkdir -p "$BIN"
	go build -o "$BIN/" "${pkgs[@]}"
}

load_env() {
	"$ROOT/.ci/servers.sh" start dev
	set -a
	# shellcheck source=/dev/null
	source "$DATA/stack.env"
	set +a
	# The development stack: the gateway may use the public development
	# pepper and the test-only settings (production sets API_KEY_PEPPER).
	export DEV_MODE=1
}

# app_env NAME: the settings one binary gets on top of .data/stack.env, one a line.
app_env() {
	case $1 in
	authdev) printf '%s\n' "PORT=$AUTHDEV_PORT" "AUTH_KEY_FILE=$DATA/auth/jwt.pem" ;;
	search) printf '%s\n' "PORT=$SEARCH_PORT" "EXTRACT_ALLOW_HOSTS=127.0.0.1:$SEARCH_PORT,localhost:$SEARCH_PORT" ;;
	stt) echo "PORT=$STT_PORT" ;;
	tts) echo "PORT=$TTS_PORT" ;;
	webhookdev) echo "PORT=$WEBHOOKDEV_PORT" ;;
	billing-worker) printf '%s\n' "METRICS_PORT=$BILLING_METRICS_PORT" "WEBHOOK_ALLOW_HOSTS=127.0.0.1,localhost" ;;
	aggregator) echo "METRICS_PORT=$AGGREGATOR_METRICS_PORT" ;;
	gateway) printf '%s\n' "PORT=$GATEWAY_PORT" "SPOOL_DIR=$DATA/spool" ;;
	esac
}

any_running() {
	local e
	for e in "${APPS[@]}"; do
		if pid_alive "$RUN/$(app_field "$e" 0).pid"; then return 0; fi
	done
	return 1
}

start_apps() {
	local e name port taken=() pid envs
	if any_running; then
		die "the stack is already running (make down stops it; make status shows it)"
	fi
	for e in "${APPS[@]}"; do
		port=$(app_field "$e" 2)
		if port_open "$port"; then taken+=("$port ($(app_field "$e" 0))"); fi
	done
	((${#taken[@]} == 0)) || die "ports already in use: ${taken[*]}; stop what holds them (ss -ltnp) and retry"

	# curl for the readiness checks, jq for the curl lines the banner suggests.
	ensure_cmd curl curl
	ensure_cmd jq jq
	if [[ -z ${STACK_SKIP_BUILD:-} ]]; then build; fi
	load_env
	mkdir -p "$RUN" "$LOGS" "$DATA/auth" "$DATA/spool"
	export LOG_LEVEL=${LOG_LEVEL:-info}
	log "migrating the database (bin/gateway migrate)"
	if ! "$BIN/gateway" migrate >"$LOGS/migrate.log" 2>&1; then
		tail -n 30 "$LOGS/migrate.log" >&2
		die "migration failed (log: .data/logs/migrate.log)"
	fi
	for e in "${APPS[@]}"; do
		name=$(app_field "$e" 0)
		mapfile -t envs < <(app_env "$name")
		if [[ -f $LOGS/$name.log ]]; then mv -f "$LOGS/$name.log" "$LOGS/$name.log.prev"; fi
		setsid env "${envs[@]}" "$BIN/$name" >>"$LOGS/$name.log" 2>&1 </dev/null &
		pid=$!
		echo "$pid" >"$RUN/$name.pid"
		log "started $name (pid $pid, log .data/logs/$name.log)"
		if [[ $name == authdev ]]; then wait_port "$name" "$AUTHDEV_PORT"; fi
	done
	wait_ready
	if [[ ${MONITORING:-} == 1 ]]; then start_monitoring; fi
}

wait_port() { # NAME PORT
	local i
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		port_open "$2" && return 0
		check_alive
		sleep 0.1
	done
	fail "$1 did not listen on :$2 within ${READY_TIMEOUT}s" "$1"
}

# check_alive fails when a started binary has exited.
check_alive() {
	local e name
	for e in "${APPS[@]}"; do
		name=$(app_field "$e" 0)
		if [[ -f $RUN/$name.pid ]] && ! pid_alive "$RUN/$name.pid"; then
			fail "$name exited" "$name"
		fi
	done
}

# fail MESSAGE [NAME]: shows the logs' tails (NAME's last, at length), stops
# everything and exits 1.
fail() {
	local e name culprit=${2:-}
	warn "$1"
	stop_all
	for e in "${APPS[@]}"; do
		name=$(app_field "$e" 0)
		if [[ $name != "$culprit" && -s $LOGS/$name.log ]]; then
			printf '\n--- last lines of .data/logs/%s.log\n' "$name" >&2
			tail -n 8 "$LOGS/$name.log" >&2
		fi
	done
	if [[ -n $culprit && -s $LOGS/$culprit.log ]]; then
		printf '\n--- last lines of .data/logs/%s.log\n' "$culprit" >&2
		tail -n 40 "$LOGS/$culprit.log" >&2
	fi
	printf '\nerror: %s\n' "$1" >&2
	exit 1
}

wait_ready() {
	local i e name port path code
	log "waiting for the gateway: http://127.0.0.1:$GATEWAY_PORT/ready (up to ${READY_TIMEOUT}s)"
	for ((i = 0; i < READY_TIMEOUT * 4; i++)); do
		check_alive
		code=$(http_status "http://127.0.0.1:$GATEWAY_PORT/ready")
		if [[ $code == 200 ]]; then
			for e in "${APPS[@]}"; do
				name=$(app_field "$e" 0) port=$(app_field "$e" 2) path=$(app_field "$e" 3)
				port_open "$port" || fail "$name does not listen on :$port" "$name"
				if [[ -n $path && $(http_status "http://127.0.0.1:$port$path") != 200 ]]; then
					fail "$name: GET :$port$path is not 200" "$name"
				fi
			done
			return 0
		fi
		sleep 0.25
	done
	fail "the gateway was not ready within ${READY_TIMEOUT}s (last /ready status: $code)" gateway
}

# start_monitoring starts Prometheus on loopback, scraping the binaries that
# serve /metrics, with the alert rules loaded.
start_monitoring() {
	local port conf=$DATA/monitoring/prometheus.yml pid i
	ensure_cmd prometheus prometheus
	mkdir -p "$DATA/monitoring" "$DATA/prometheus" "$RUN" "$LOGS"
	port=$(free_port "${PROMETHEUS_PORTS[@]}") || die "no free port for Prometheus"
	cat >"$conf" <<EOF
# written by .ci/stack.sh (MONITORING=1); rewritten on every start
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: gateway
    static_configs: [{targets: ["127.0.0.1:$GATEWAY_PORT"]}]
  - job_name: billing-worker
    static_configs: [{targets: ["127.0.0.1:$BILLING_METRICS_PORT"]}]
  - job_name: aggregator
    static_configs: [{targets: ["127.0.0.1:$AGGREGATOR_METRICS_PORT"]}]
EOF
	if [[ -f $LOGS/prometheus.log ]]; then mv -f "$LOGS/prometheus.log" "$LOGS/prometheus.log.prev"; fi
	setsid prometheus --config.file="$conf" --storage.tsdb.path="$DATA/prometheus" \
		--web.listen-address="127.0.0.1:$port" >>"$LOGS/prometheus.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$RUN/prometheus.pid"
	for ((i = 0; i < READY_TIMEOUT * 4; i++)); do
		if [[ $(http_status "http://127.0.0.1:$port/-/ready") == 200 ]]; then
			echo "$port" >"$RUN/prometheus.port"
			log "started Prometheus (pid $pid, log .data/logs/prometheus.log): http://127.0.0.1:$port"
			return 0
		fi
		pid_alive "$RUN/prometheus.pid" || break
		sleep 0.25
	done
	tail -n 20 "$LOGS/prometheus.log" >&2 || true
	fail "Prometheus did not become ready on 127.0.0.1:$port"
}

stop_apps() {
	local i name
	stop_pidfile "$RUN/prometheus.pid" Prometheus
	rm -f "$RUN/prometheus.port"
	for ((i = ${#APPS[@]} - 1; i >= 0; i--)); do
		name=$(app_field "${APPS[$i]}" 0)
		stop_pidfile "$RUN/$name.pid" "$name" 30
	done
}

stop_all() {
	# A second Ctrl-C (or make's own SIGTERM) must not cut the shutdown short.
	trap '' INT TERM
	stop_apps
	# What `make up-cluster` started, if anything.
	if [[ -d $DATA/cluster/run ]]; then "$ROOT/.ci/cluster.sh" down; fi
	"$ROOT/.ci/servers.sh" stop dev
}

banner() {
	cat <<EOF

Mana API Gateway is up.
  gateway      http://127.0.0.1:$GATEWAY_PORT   (/health, /ready, /metrics)
  dashboard    http://127.0.0.1:$GATEWAY_PORT/dashboard   (sign in as a dev user below)
  dev auth     http://127.0.0.1:$AUTHDEV_PORT   (POST /api/v1/auth/login, /.well-known/jwks.json)
  search       http://127.0.0.1:$SEARCH_PORT   stt http://127.0.0.1:$STT_PORT   tts http://127.0.0.1:$TTS_PORT   (stand-ins)
  webhooks     http://127.0.0.1:$WEBHOOKDEV_PORT   (a receiver that verifies signatures; its log: .data/logs/webhookdev.log)
  workers      billing-worker http://127.0.0.1:$BILLING_METRICS_PORT/metrics   aggregator http://127.0.0.1:$AGGREGATOR_METRICS_PORT/metrics
  logs         .data/logs/*.log
EOF
	if [[ -s $RUN/prometheus.port ]]; then
		printf '  prometheus   http://127.0.0.1:%s   (MONITORING=1; alerts at /alerts)\n' "$(<"$RUN/prometheus.port")"
	fi
	cat <<'EOF'

Dev users (password "password" for all):
  user@example.com, other@example.com, finance@example.com (role finance), admin@example.com (role admin)

Try it:
  TOKEN=$(curl -s -X POST http://localhost:3001/api/v1/auth/login \
    -H "Content-Type: application/json" \
    -d '{"email": "user@example.com", "password": "password"}' | jq -r '.accessToken')

  KEY_JSON=$(curl -s -X POST http://localhost:3030/api-keys \
    -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
    -d '{"name": "My API Key", "tier": "pro"}')
  KEY=$(echo "$KEY_JSON" | jq -r '.key'); KEY_ID=$(echo "$KEY_JSON" | jq -r '.id')

  curl -s -X POST http://localhost:3030/v1/search \
    -H "X-API-Key: $KEY" -H "Content-Type: application/json" \
    -d '{"query": "quantum computing"}' | jq .

  curl -s http://localhost:3030/api-keys/$KEY_ID/usage/summary \
    -H "Authorization: Bearer $TOKEN" | jq .

Watch a webhook arrive (the dev receiver verifies every signature):
  SECRET=$(curl -s -X POST http://localhost:3030/webhooks \
    -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
    -d '{"url": "http://127.0.0.1:3040/hook", "thresholds": [1, 50, 80, 100]}' | jq -r '.secret')
  curl -s -X POST http://localhost:3040/secrets -d "{\"secret\": \"$SECRET\"}"
  curl -s -X PATCH http://localhost:3030/api-keys/$KEY_ID \
    -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d '{"name": "renamed"}' >/dev/null
  sleep 2; curl -s http://localhost:3040/received | jq .   # key.updated; credits.threshold once 1 % (50 credits on pro) is used

EOF
}

cmd_run() {
	trap 'echo; log "stopping"; stop_all; exit 130' INT
	trap 'stop_all; exit 143' TERM
	start_apps
	banner
	log "running in the foreground; Ctrl-C stops everything"
	while true; do
		# Wake up on a signal (traps run) or every few seconds to check.
		sleep 2 &
		wait $! || true
		check_alive
	done
}


cmd_status() {
	local e name
	"$ROOT/.ci/servers.sh" status dev
	for e in "${APPS[@]}"; do
		name=$(app_field "$e" 0)
		if pid_alive "$RUN/$name.pid"; then
			echo "$name: running (pid $(<"$RUN/$name.pid"))"
		else
			echo "$name: stopped"
		fi
	done
	if pid_alive "$RUN/prometheus.pid"; then
		echo "prometheus: running on http://127.0.0.1:$(cat "$RUN/prometheus.port" 2>/dev/null) (pid $(<"$RUN/prometheus.pid"))"
	fi
}

case ${1:-} in
build) build ;;
run) cmd_run ;;
up)
	trap 'echo; stop_all; exit 130' INT
	start_apps
	trap - INT
	banner
	log "running in the background; make down stops it"
	;;
down) stop_all ;;
status) cmd_status ;;
exec)
	shift
	(($# > 0)) || die "usage: $0 exec CMD [ARGS…]"
	load_env
	exec "$@"
	;;
*)
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit 2
	;;
esac
