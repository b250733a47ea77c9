#!/usr/bin/env bash
# The benchmarks: the gateway against a direct call, nginx and a
# bare Go reverse proxy, plus the usage pipeline. Installs what is missing
# (nginx, PostgreSQL, Redis from apt; nats-server into .data/bin), builds the
# binaries into .data/bench/bin, starts its OWN PostgreSQL, Redis and NATS
# (.ci/servers.sh start bench: own ports and data under .data/bench/servers or
# /tmp, thrown away at the end; a running `make up` or `make test` is
# untouched), runs the handler-chain Go
# benchmark with a CPU profile, then the harness (services/cmd/bench), which
# starts the stand-in, nginx, the bare proxy, the gateway and the workers and
# writes the report.
#
# usage: [CLUSTER=1] .ci/bench.sh [full|smoke]
#   full   about 12 minutes on 2 cores (CLUSTER=1: about 35); writes docs/benchmarks.md
#   smoke  a few seconds of each step; writes .data/bench/smoke.md
# CLUSTER=1 also starts three nats-servers in one JetStream cluster and a
# Redis Cluster of three masters (own ports and data, like the servers
# above); the harness then measures the scaled-out full path (nginx in front
# of two gateways, the USAGE stream at three replicas, and at one for
# comparison) in the same rounds as the single-node targets, and writes it
# beside them in a section of its own.
# BENCH_* variables override the harness's settings (services/cmd/bench/config.go).
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

PROFILE=${1:-full}
[[ $PROFILE == full || $PROFILE == smoke ]] || die "usage: $0 [full|smoke]"
BENCH=$DATA/bench
BIN=$BENCH/bin
WORK=$BENCH/work

# ------------------------------------------------------------------ tools

ensure_cmd nginx nginx
ensure_cmd redis-server redis-server
ensure_cmd redis-cli redis-tools
NATS_BIN=$(go_tool nats-server github.com/nats-io/nats-server/v2 github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION")
NGINX_BIN=$(command -v nginx)

log "go build -o .data/bench/bin/ (gateway, search, billing-worker, aggregator, bench)"
mkdir -p "$BIN"
go build -o "$BIN/" ./gateway/cmd/gateway ./services/cmd/search ./billing-worker/cmd/billing-worker \
	./aggregator/cmd/aggregator ./services/cmd/bench

# ---------------------------------------------------------------- servers

# PostgreSQL, Redis, NATS and the diagnostic NATS without per-write fsync:
# .ci/servers.sh's bench profile (own ports and data, thrown away by stop).
servers=("$ROOT/.ci/servers.sh")
CLUSTER_PIDS=()
cleanup() {
	trap '' INT TERM
	local pid
	for pid in "${CLUSTER_PIDS[@]}"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	for pid in 1 2 3; do stop_pidfile "$BENCH/cluster/redis-$pid.pid" "Redis Cluster node $pid" 10 2>/dev/null || true; done
	"${servers[@]}" stop bench >/dev/null 2>&1 || warn "stopping the bench servers failed"
	rm -rf "$BENCH/cluster"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Servers left by an interrupted run go first, with their data.
"${servers[@]}" stop bench >/dev/null 2>&1 || true
rm -rf "$WORK" "$BENCH/cluster"
mkdir -p "$WORK"
"${servers[@]}" start bench
# shellcheck source=/dev/null
source "$BENCH/servers/stack.env"
PG_URL=$DATABASE_URL

# ---------------------------------------------------------- the cluster (CLUSTER=1)

# Three nats-servers routed into one JetStream cluster, every write fsynced
# (as .ci/cluster.sh runs them), and a Redis Cluster of three masters. The
# NATS cluster has two accounts, each with its own JetStream: the cluster
# gateways of account R3 keep USAGE at three replicas, those of account R1 at
# one, so what replication costs is measured on the same servers, disk and
# routes, in the same rounds.
CLUSTER_ENV=()
if [[ -n ${CLUSTER:-} && ${CLUSTER:-} != 0 ]]; then
	ensure_cmd curl curl
	mkdir -p "$BENCH/cluster"
	c_client=() c_route=() c_mon=() c_mons=() c_pids=() c_redis=() r_pids=() taken=() routes=""
	pick() { # pick PREFERRED: a free port none of the cluster's servers took yet
		local p
		p=$(free_port "$1") || die "no free port for the cluster"
		while [[ " ${taken[*]} " == *" $p "* ]] || port_open "$p"; do p=$((p + 1)); done
		printf '%s\n' "$p"
	}
	for n in 1 2 3; do
		c_client+=("$(pick $((BENCH_CLUSTER_NATS_BASE + n)))") && taken+=("${c_client[-1]}")
		c_route+=("$(pick $((BENCH_CLUSTER_NATS_ROUTE_BASE + n)))") && taken+=("${c_route[-1]}")
		c_mon+=("$(pick $((BENCH_CLUSTER_NATS_MON_BASE + n)))") && taken+=("${c_mon[-1]}")
		routes+="nats-route://127.0.0.1:${c_route[-1]},"
	done
	for n in 1 2 3; do
		i=$((n - 1))
		mkdir -p "$BENCH/cluster/nats-$n"
		cat >"$BENCH/cluster/nats-$n.conf" <<EOF
# written by .ci/bench.sh (CLUSTER=1); JetStream fsyncs every write, as .ci/cluster.sh
server_name: bench-n$n
listen: 127.0.0.1:${c_client[$i]}
http: 127.0.0.1:${c_mon[$i]}
cluster {
  name: bench
  listen: 127.0.0.1:${c_route[$i]}
  routes: [${routes%,}]
}
jetstream {
  store_dir: "$BENCH/cluster/nats-$n"
  sync_interval: always
}
accounts {
  R3: { jetstream: enabled, users: [{user: r3, password: bench}] }
  R1: { jetstream: enabled, users: [{user: r1, password: bench}] }
}
EOF
		"$NATS_BIN" -c "$BENCH/cluster/nats-$n.conf" >"$BENCH/cluster/nats-$n.log" 2>&1 &
		CLUSTER_PIDS+=($!)
		c_pids+=($!)
		c_mons+=("http://127.0.0.1:${c_mon[$i]}")
	done
	log "starting a JetStream cluster of three nats-servers on 127.0.0.1:${c_client[*]}"
	for n in 1 2 3; do
		m=${c_mons[$((n - 1))]}
		for ((i = 0; i < 300; i++)); do
			curl -sf "$m/healthz" >/dev/null 2>&1 && break
			sleep 0.1
		done
		curl -sf "$m/healthz" >/dev/null 2>&1 || die "cluster nats-server $n was not healthy: $(tail -n 5 "$BENCH/cluster/nats-$n.log")"
	done
	for n in 1 2 3; do
		p=$(pick $((BENCH_CLUSTER_REDIS_BASE + n))) && taken+=("$p")
		bus=$(pick $((BENCH_CLUSTER_REDIS_BUS_BASE + n))) && taken+=("$bus")
		mkdir -p "$BENCH/cluster/redis-$n"
		# As .ci/cluster.sh runs them: append-only, fsync every second.
		redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --cluster-port "$bus" \
			--cluster-config-file nodes.conf --cluster-node-timeout 2000 --dir "$BENCH/cluster/redis-$n" \
			--save "" --appendonly yes --appendfsync everysec --daemonize yes \
			--pidfile "$BENCH/cluster/redis-$n.pid" --logfile "$BENCH/cluster/redis-$n.log"
		c_redis+=("127.0.0.1:$p")
	done
	for n in 1 2 3; do
		p=${c_redis[$((n - 1))]#*:}
		for ((i = 0; i < 100; i++)); do
			[[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] && break
			sleep 0.1
		done
		[[ $(redis-cli -p "$p" ping 2>/dev/null) == PONG ]] || die "Redis Cluster node $n did not start"
		r_pids+=("$(<"$BENCH/cluster/redis-$n.pid")")
	done
	log "redis-cli --cluster create ${c_redis[*]}"
	redis-cli --cluster create "${c_redis[@]}" --cluster-yes >"$BENCH/cluster/redis-create.log" 2>&1 ||
		die "redis-cli --cluster create failed: $(tail -n 5 "$BENCH/cluster/redis-create.log")"
	for n in 1 2 3; do
		p=${c_redis[$((n - 1))]#*:}
		for ((i = 0; i < 300; i++)); do
			redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
			sleep 0.1
		done
		redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || die "the Redis Cluster was not ok"
	done
	urls() { # urls USER: the cluster's client URLs with USER's (benchmark-only) credentials
		local out="" p
		for p in "${c_client[@]}"; do out+="nats://$1:bench@127.0.0.1:$p,"; done
		printf '%s\n' "${out%,}"
	}
	commas() {
		local IFS=,
		printf '%s\n' "$*"
	}
	CLUSTER_ENV=("BENCH_CLUSTER_NATS_URL=$(urls r3)" "BENCH_CLUSTER_R1_NATS_URL=$(urls r1)"
		"BENCH_CLUSTER_NATS_PIDS=$(commas "${c_pids[@]}")" "BENCH_CLUSTER_NATS_MONITORS=$(commas "${c_mons[@]}")"
		"BENCH_CLUSTER_REDIS_ADDRS=$(commas "${c_redis[@]}")" "BENCH_CLUSTER_REDIS_PIDS=$(commas "${r_pids[@]}")")
fi

# ------------------------------------------------- handler-chain benchmark

benchtime=2s
[[ $PROFILE == smoke ]] && benchtime=20x
log "go test -bench (handler chain, -benchmem, -benchtime $benchtime) ./gateway/internal/proxy/"
TEST_DATABASE_URL=$PG_URL go test -run '^$' -bench 'BenchmarkEdgeFullPath$|BenchmarkBareProxy$' \
	-benchmem -benchtime "$benchtime" -count 1 ./gateway/internal/proxy/ | tee "$WORK/gobench.txt"
log "go test -bench BenchmarkEdgeFullPath/parallel -cpuprofile"
TEST_DATABASE_URL=$PG_URL go test -run '^$' -bench 'BenchmarkEdgeFullPath$/parallel' -benchtime "$benchtime" -count 1 \
	-o "$WORK/proxy.test" -cpuprofile "$WORK/cpu.pprof" ./gateway/internal/proxy/ >"$WORK/gobench-profile.txt"
{
	echo "# flat, everything in the benchmark's process"
	go tool pprof -top -nodecount=25 "$WORK/proxy.test" "$WORK/cpu.pprof" 2>/dev/null | sed -n '/flat%/,$p'
	echo
	echo "# cumulative, the gateway's code only (without the embedded NATS server and the counting relays)"
	go tool pprof -top -cum -focus 'gateway/internal' -ignore 'nats-server/v2/server|startCountingRelay' -nodecount=40 \
		"$WORK/proxy.test" "$WORK/cpu.pprof" 2>/dev/null | sed -n '/flat%/,$p' | grep -v 'testing\.\|proxy_test\.'
} >"$WORK/pprof-top.txt"

# ----------------------------------------------------------------- harness

OUT=$ROOT/docs/benchmarks.md
[[ $PROFILE == smoke ]] && OUT=$BENCH/smoke.md
log "bench run ($PROFILE) → ${OUT#"$ROOT"/}"
# shellcheck disable=SC2153 # REDIS_PID, NATS_PID and the URLs come from the servers' stack.env
BENCH_PROFILE=$PROFILE BENCH_DATABASE_URL=$PG_URL BENCH_REDIS_ADDR=$REDIS_HOST:$REDIS_PORT \
	BENCH_NATS_URL=$NATS_URL BENCH_REDIS_PID=$REDIS_PID BENCH_NATS_PID=$NATS_PID \
	BENCH_NATS_NOFSYNC_URL=$NATS_NOFSYNC_URL BENCH_NATS_NOFSYNC_PID=$NATS_NOFSYNC_PID \
	BENCH_BIN_DIR=$BIN BENCH_WORK_DIR=$WORK BENCH_OUT=$OUT BENCH_NGINX=$NGINX_BIN BENCH_NATS_SERVER=$NATS_BIN \
	BENCH_NATS_DIR=$NATS_STORE_DIR BENCH_GO_BENCH=$WORK/gobench.txt BENCH_PPROF_TOP=$WORK/pprof-top.txt \
	env "${CLUSTER_ENV[@]}" "$BIN/bench" run
log "report: ${OUT#"$ROOT"/}"
