#!/usr/bin/env bash
# Runs the stack scaled out on this machine: three nats-servers forming a
# JetStream cluster (the USAGE stream at three replicas), a Redis Cluster of
# three masters (redis-server --cluster-enabled, joined by redis-cli --cluster
# create), PostgreSQL as `make up` runs it, two gateways (:3031, :3032) behind
# nginx from Debian's package on :3030, the workers and the stand-ins (ports
# from .ci/ports.sh). The seed's curl lines work against it unchanged.
#
# usage: .ci/cluster.sh up       start it in the background, return when :3030/ready is 200
#        .ci/cluster.sh down     stop it (`make down` calls this too)
#        .ci/cluster.sh status   what runs
# Data in .data/cluster/, logs in .data/cluster/logs/, pid files in .data/cluster/run/.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

BASE=$DATA/cluster
RUN=$BASE/run
LOGS=$BASE/logs
BIN=$ROOT/bin
READY_TIMEOUT=${READY_TIMEOUT:-120}
NATS_NODES=(1 2 3)
REDIS_NODES=(1 2 3)

# name|binary|port|health path|settings (space-separated); ports from
# .ci/ports.sh. Start order: the
# first gateway creates the USAGE stream at R3 before anything else uses it.
APPS=(
	"authdev|authdev|$AUTHDEV_PORT||PORT=$AUTHDEV_PORT AUTH_KEY_FILE=$DATA/auth/jwt.pem"
	"search|search|$SEARCH_PORT||PORT=$SEARCH_PORT EXTRACT_ALLOW_HOSTS=127.0.0.1:$SEARCH_PORT,localhost:$SEARCH_PORT"
	"stt|stt|$STT_PORT||PORT=$STT_PORT"
	"tts|tts|$TTS_PORT||PORT=$TTS_PORT"
	"gateway-1|gateway|${CLUSTER_GATEWAY_PORTS[0]}|/ready|PORT=${CLUSTER_GATEWAY_PORTS[0]} GATEWAY_ID=gateway-1 SPOOL_DIR=$BASE/spool-1"
	"gateway-2|gateway|${CLUSTER_GATEWAY_PORTS[1]}|/ready|PORT=${CLUSTER_GATEWAY_PORTS[1]} GATEWAY_ID=gateway-2 SPOOL_DIR=$BASE/spool-2"
	"billing-worker|billing-worker|$BILLING_METRICS_PORT|/health|METRICS_PORT=$BILLING_METRICS_PORT WEBHOOK_ALLOW_HOSTS=127.0.0.1,localhost"
	"aggregator|aggregator|$AGGREGATOR_METRICS_PORT|/health|METRICS_PORT=$AGGREGATOR_METRICS_PORT"
)

node_addrs() { # node_addrs SCHEME BASE: 127.0.0.1:BASE+n of every node, comma-separated
	local n out=""
	for n in "${NATS_NODES[@]}"; do out+="${1}127.0.0.1:$(($2 + n)),"; done
	printf '%s\n' "${out%,}"
}

field() { # field ENTRY INDEX
	local IFS='|'
	# shellcheck disable=SC2206
	local f=($1)
	printf '%s\n' "${f[$2]:-}"
}

wait_for() { # wait_for WHAT COMMAND…: retry COMMAND for READY_TIMEOUT seconds
	local what=$1 i
	shift
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	down
	die "$what within ${READY_TIMEOUT}s (logs: .data/cluster/logs/)"
}

nats_up() {
	local bin n routes=""
	bin=$(go_tool nats-server github.com/nats-io/nats-server/v2 github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION")
	for n in "${NATS_NODES[@]}"; do routes+="nats-route://127.0.0.1:$((CLUSTER_NATS_ROUTE_BASE + n)),"; done
	for n in "${NATS_NODES[@]}"; do
		mkdir -p "$BASE/nats-$n"
		# sync_interval: always, as `make up`: an acknowledgement means on disk.
		cat >"$BASE/nats-$n.conf" <<EOF
# written by .ci/cluster.sh; rewritten on every start
server_name: mana-n$n
listen: 127.0.0.1:$((CLUSTER_NATS_BASE + n))
http: 127.0.0.1:$((CLUSTER_NATS_MON_BASE + n))
pid_file: "$RUN/nats-$n.pid"
cluster {
  name: mana
  listen: 127.0.0.1:$((CLUSTER_NATS_ROUTE_BASE + n))
  routes: [${routes%,}]
}
jetstream {
  store_dir: "$BASE/nats-$n"
  sync_interval: always
}
EOF
		setsid nohup "$bin" -c "$BASE/nats-$n.conf" >>"$LOGS/nats-$n.log" 2>&1 </dev/null &
		log "started nats-server n$n on 127.0.0.1:$((CLUSTER_NATS_BASE + n)) (routes :$((CLUSTER_NATS_ROUTE_BASE + n)), monitor :$((CLUSTER_NATS_MON_BASE + n)))"
	done
	for n in "${NATS_NODES[@]}"; do
		wait_for "nats-server n$n was not ready" curl -sf "http://127.0.0.1:$((CLUSTER_NATS_MON_BASE + n))/healthz"
	done
}

redis_up() {
	local n addrs=()
	ensure_cmd redis-server redis-server
	ensure_cmd redis-cli redis-tools
	for n in "${REDIS_NODES[@]}"; do
		mkdir -p "$BASE/redis-$n"
		redis-server --bind 127.0.0.1 --port $((CLUSTER_REDIS_BASE + n)) --cluster-enabled yes --cluster-port $((CLUSTER_REDIS_BUS_BASE + n)) \
			--cluster-config-file nodes.conf --cluster-node-timeout 2000 --dir "$BASE/redis-$n" \
			--save "" --appendonly yes --appendfsync everysec --daemonize yes \
			--pidfile "$RUN/redis-$n.pid" --logfile "$LOGS/redis-$n.log"
		addrs+=("127.0.0.1:$((CLUSTER_REDIS_BASE + n))")
		log "started redis-server (cluster node) on 127.0.0.1:$((CLUSTER_REDIS_BASE + n))"
	done
	for n in "${REDIS_NODES[@]}"; do
		wait_for "redis-server :$((CLUSTER_REDIS_BASE + n)) did not answer" redis-cli -p $((CLUSTER_REDIS_BASE + n)) ping
	done
	# A cluster created before keeps its nodes.conf: only a new one is joined.
	if ! redis-cli -p $((CLUSTER_REDIS_BASE + 1)) cluster info | grep -q '^cluster_slots_assigned:16384'; then
		log "redis-cli --cluster create ${addrs[*]}"
		redis-cli --cluster create "${addrs[@]}" --cluster-yes >"$LOGS/redis-create.log" 2>&1 ||
			{ tail -n 20 "$LOGS/redis-create.log" >&2; down; die "redis-cli --cluster create failed"; }
	fi
	for n in "${REDIS_NODES[@]}"; do
		wait_for "the Redis Cluster was not ok" sh -c "redis-cli -p $((CLUSTER_REDIS_BASE + n)) cluster info | grep -q '^cluster_state:ok'"
	done
}

nginx_up() {
	ensure_cmd nginx nginx
	mkdir -p "$BASE/nginx"
	cat >"$BASE/nginx.conf" <<EOF
# written by .ci/cluster.sh; rewritten on every start
daemon off;
worker_processes 2;
pid $RUN/nginx.pid;
error_log $LOGS/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $BASE/nginx/body;
  proxy_temp_path $BASE/nginx/proxy;
  fastcgi_temp_path $BASE/nginx/fastcgi;
  uwsgi_temp_path $BASE/nginx/uwsgi;
  scgi_temp_path $BASE/nginx/scgi;
  upstream gateways {
    server 127.0.0.1:${CLUSTER_GATEWAY_PORTS[0]} max_fails=1 fail_timeout=2s;
    server 127.0.0.1:${CLUSTER_GATEWAY_PORTS[1]} max_fails=1 fail_timeout=2s;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$GATEWAY_PORT;
    # The gateway enforces its own body limits and streams uploads.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_read_timeout 300s;
      # A gateway that refuses the connection is skipped; a call that
      # reached one is never sent twice (POST is not retried once sent).
      proxy_next_upstream error timeout;
    }
  }
}
EOF
	setsid nginx -c "$BASE/nginx.conf" -e "$LOGS/nginx.log" >>"$LOGS/nginx.out" 2>&1 </dev/null &
	log "started nginx on 127.0.0.1:$GATEWAY_PORT in front of :${CLUSTER_GATEWAY_PORTS[0]} and :${CLUSTER_GATEWAY_PORTS[1]}"
}

apps_up() {
	local e name bin envs common n
	common=("DEV_MODE=1" "LOG_LEVEL=${LOG_LEVEL:-info}" "DATABASE_URL=$DATABASE_URL"
		"NATS_URL=$(node_addrs nats:// "$CLUSTER_NATS_BASE")"
		"REDIS_ADDRS=$(node_addrs "" "$CLUSTER_REDIS_BASE")" "USAGE_STREAM_REPLICAS=3")
	mkdir -p "$DATA/auth"
	log "migrating the database (bin/gateway migrate)"
	env "${common[@]}" "$BIN/gateway" migrate >"$LOGS/migrate.log" 2>&1 ||
		{ tail -n 30 "$LOGS/migrate.log" >&2; down; die "migration failed"; }
	for e in "${APPS[@]}"; do
		name=$(field "$e" 0) bin=$(field "$e" 1)
		read -r -a envs <<<"$(field "$e" 4)"
		setsid env "${common[@]}" "${envs[@]}" "$BIN/$bin" >>"$LOGS/$name.log" 2>&1 </dev/null &
		echo $! >"$RUN/$name.pid"
		log "started $name (pid $!, log .data/cluster/logs/$name.log)"
		if [[ $name == authdev ]]; then wait_for "authdev did not listen" port_open "$AUTHDEV_PORT"; fi
		# The first gateway creates the stream; the second finds it.
		if [[ $name == gateway-1 ]]; then wait_for "gateway-1 was not ready" curl -sf "http://127.0.0.1:${CLUSTER_GATEWAY_PORTS[0]}/ready"; fi
	done
	for e in "${APPS[@]}"; do
		name=$(field "$e" 0) n=$(field "$e" 2)
		if [[ -n $(field "$e" 3) ]]; then
			wait_for "$name was not ready" curl -sf "http://127.0.0.1:$n$(field "$e" 3)"
		else
			wait_for "$name did not listen on :$n" port_open "$n"
		fi
	done
}

up() {
	local e p taken=()
	for e in "${APPS[@]}" "nginx||$GATEWAY_PORT" "nats||$((CLUSTER_NATS_BASE + 1))" "redis||$((CLUSTER_REDIS_BASE + 1))"; do
		p=$(field "$e" 2)
		if port_open "$p"; then taken+=("$p"); fi
	done
	((${#taken[@]} == 0)) || die "ports already in use: ${taken[*]} (make down stops a running stack; ss -ltnp shows who holds them)"
	ensure_cmd curl curl
	ensure_cmd jq jq
	if [[ -z ${STACK_SKIP_BUILD:-} ]]; then "$ROOT/.ci/stack.sh" build; fi
	mkdir -p "$RUN" "$LOGS"
	"$ROOT/.ci/servers.sh" start dev pg
	set -a
	# shellcheck source=/dev/null
	source "$DATA/stack.env"
	set +a
	nats_up
	redis_up
	apps_up
	nginx_up
	wait_for "the gateways were not ready behind nginx" curl -sf "http://127.0.0.1:$GATEWAY_PORT/ready"
	cat <<EOF

Mana API Gateway is up on a cluster.
  gateway      http://127.0.0.1:$GATEWAY_PORT   (nginx; gateways on :${CLUSTER_GATEWAY_PORTS[0]} and :${CLUSTER_GATEWAY_PORTS[1]})
  NATS         $(node_addrs nats:// "$CLUSTER_NATS_BASE") (JetStream cluster, USAGE at R3; monitors :$((CLUSTER_NATS_MON_BASE + 1))-$((CLUSTER_NATS_MON_BASE + 3)))
  Redis        $(node_addrs "" "$CLUSTER_REDIS_BASE") (Redis Cluster, three masters)
  dev auth     http://127.0.0.1:$AUTHDEV_PORT; stand-ins :$STT_PORT (stt), :$SEARCH_PORT (search), :$TTS_PORT (tts); workers :$BILLING_METRICS_PORT, :$AGGREGATOR_METRICS_PORT
  logs         .data/cluster/logs/*.log

The curl lines of \`make up\` work unchanged; \`make down\` stops everything.
EOF
}

down() {
	local i n
	trap '' INT TERM
	stop_pidfile "$RUN/nginx.pid" nginx
	for ((i = ${#APPS[@]} - 1; i >= 0; i--)); do
		stop_pidfile "$RUN/$(field "${APPS[$i]}" 0).pid" "$(field "${APPS[$i]}" 0)" 30
	done
	for n in "${REDIS_NODES[@]}"; do stop_pidfile "$RUN/redis-$n.pid" "redis-$n"; done
	for n in "${NATS_NODES[@]}"; do stop_pidfile "$RUN/nats-$n.pid" "nats-$n"; done
}

status() {
	local e n name
	for n in "${NATS_NODES[@]}"; do
		if pid_alive "$RUN/nats-$n.pid"; then echo "nats-$n: running on 127.0.0.1:$((CLUSTER_NATS_BASE + n))"; else echo "nats-$n: stopped"; fi
	done
	for n in "${REDIS_NODES[@]}"; do
		if pid_alive "$RUN/redis-$n.pid"; then echo "redis-$n: running on 127.0.0.1:$((CLUSTER_REDIS_BASE + n))"; else echo "redis-$n: stopped"; fi
	done
	for e in "${APPS[@]}" "nginx"; do
		name=$(field "$e" 0)
		if pid_alive "$RUN/$name.pid"; then echo "$name: running (pid $(<"$RUN/$name.pid"))"; else echo "$name: stopped"; fi
	done
}

case ${1:-} in
up)
	trap 'echo; down; exit 130' INT
	up
	;;
down) down ;;
status) status ;;
*)
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit 2
	;;
esac
