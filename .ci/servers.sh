#!/usr/bin/env bash
# Installs (when missing), starts and stops the servers the project needs:
# PostgreSQL, Redis and NATS (JetStream). Three profiles keep apart, each with
# its own data folder and its ports from .ci/ports.sh:
#   dev    data in .data/; used by `make run`/`make up`/`make up-cluster`;
#          the chosen URLs go to .data/stack.env
#   test   data in .data/test/, thrown away by stop; used by `make test`;
#          the URLs go to .data/test/stack.env
#   bench  data in .data/bench/servers/, thrown away by stop; used by
#          `make bench`; production-like durability (PostgreSQL fsyncs, Redis
#          appends every second); the URLs and pids go to
#          .data/bench/servers/stack.env
#
# usage: .ci/servers.sh start|stop|status|env [dev|test|bench] [pg] [redis] [nats] [nats-nofsync]
# With no server named: dev = pg redis nats, test = pg (the tests start their
# own redis-server and an embedded NATS per test), bench = pg redis nats
# nats-nofsync. nats-nofsync is a second NATS with JetStream's default sync
# interval (fsync every two minutes), for the bench's diagnostic gateway only.
#
# PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
# Its data lives in .data/<profile>/pg when that user can reach the project
# folder, else in /tmp/mana-<hash of the project path>/<profile>/pg.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	echo "usage: $0 start|stop|status|env [dev|test|bench] [pg] [redis] [nats] [nats-nofsync]" >&2
	exit 2
}

ACTION=${1:-}
[[ -n $ACTION ]] || usage
shift
PROFILE=dev
if [[ ${1:-} == dev || ${1:-} == test || ${1:-} == bench ]]; then
	PROFILE=$1
	shift
fi
COMPONENTS=("$@")
if ((${#COMPONENTS[@]} == 0)); then
	case $PROFILE in
	dev) COMPONENTS=(pg redis nats) ;;
	test) COMPONENTS=(pg) ;;
	bench) COMPONENTS=(pg redis nats nats-nofsync) ;;
	esac
fi

case $PROFILE in
dev)
	BASE=$DATA
	PG_PORTS=("${DEV_PG_PORTS[@]}")
	REDIS_PORTS=("${DEV_REDIS_PORTS[@]}")
	NATS_PORTS=("${DEV_NATS_PORTS[@]}")
	NATS_MON_PORTS=("${DEV_NATS_MON_PORTS[@]}")
	;;
test)
	BASE=$DATA/test
	PG_PORTS=("${TEST_PG_PORTS[@]}")
	REDIS_PORTS=("${TEST_REDIS_PORTS[@]}")
	NATS_PORTS=("${TEST_NATS_PORTS[@]}")
	NATS_MON_PORTS=("${TEST_NATS_MON_PORTS[@]}")
	;;
bench)
	BASE=$DATA/bench/servers
	PG_PORTS=("${BENCH_PG_PORTS[@]}")
	REDIS_PORTS=("${BENCH_REDIS_PORTS[@]}")
	NATS_PORTS=("${BENCH_NATS_PORTS[@]}")
	NATS_MON_PORTS=("${BENCH_NATS_MON_PORTS[@]}")
	NATS_NOFSYNC_PORTS=("${BENCH_NATS_NOFSYNC_PORTS[@]}")
	;;
esac
RUN=$BASE/run
LOGS=$BASE/logs
ENV_FILE=$BASE/stack.env
HASH=$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)

# ---------------------------------------------------------------- PostgreSQL

pg_bindir() {
	local d
	d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
	[[ -n $d && -x $d/initdb && -x $d/pg_ctl ]] || return 1
	printf '%s\n' "$d"
}

pg_install() {
	if ! pg_bindir >/dev/null; then
		apt_ensure postgresql
	fi
	PGBIN=$(pg_bindir) || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin"
}

# as_pg runs a command as the user that owns the cluster (from /, which that
# user can always enter).
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# pg_paths sets PGROOT (owned by the server's user), PGDATA_DIR, PGSOCK, PGLOG.
pg_paths() {
	PGROOT=$BASE/pg
	if [[ $EUID -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "no postgres user (the postgresql package creates it)"
		mkdir -p "$PGROOT"
		chown postgres: "$PGROOT"
		if ! runuser -u postgres -- test -w "$PGROOT" 2>/dev/null; then
			# The project sits where postgres cannot go (e.g. under /root).
			PGROOT=/tmp/mana-$HASH/$PROFILE/pg
			mkdir -p "$PGROOT"
			chmod 755 "/tmp/mana-$HASH" "/tmp/mana-$HASH/$PROFILE"
			chown postgres: "$PGROOT"
			rmdir "$BASE/pg" 2>/dev/null || true
		fi
	else
		mkdir -p "$PGROOT"
	fi
	PGDATA_DIR=$PGROOT/data
	PGSOCK=$PGROOT/sock
	PGLOG=$PGROOT/postgres.log
	# A unix socket path must stay under ~107 bytes.
	if ((${#PGSOCK} > 80)); then
		PGSOCK=/tmp/mana-$HASH-$PROFILE-sock
	fi
	as_pg mkdir -p "$PGSOCK" 2>/dev/null || {
		mkdir -p "$PGSOCK"
		[[ $EUID -ne 0 ]] || chown postgres: "$PGSOCK"
	}
}

pg_running() {
	[[ -s $PGDATA_DIR/postmaster.pid ]] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

pg_port() {
	sed -n 4p "$PGDATA_DIR/postmaster.pid"
}

pg_start() {
	pg_install
	pg_paths
	local port
	if pg_running; then
		port=$(pg_port)
		log "PostgreSQL already running on 127.0.0.1:$port ($PGDATA_DIR)"
	else
		if [[ ! -s $PGDATA_DIR/PG_VERSION ]]; then
			log "initdb $PGDATA_DIR"
			as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C >"$BASE/initdb.log" 2>&1 ||
				{
					cat "$BASE/initdb.log" >&2
					die "initdb failed"
				}
			{
				echo "# added by .ci/servers.sh: loopback only, trust auth (a dev/test cluster)"
				echo "listen_addresses = '127.0.0.1'"
				echo "max_connections = 300"
				if [[ $PROFILE == test ]]; then
					echo "# tests throw their data away: trade durability for speed"
					echo "fsync = off"
					echo "synchronous_commit = off"
					echo "full_page_writes = off"
				fi
				if [[ $PROFILE == bench ]]; then
					# Default durability (fsync, synchronous_commit): the
					# pipeline figures are those of a production-like database.
					echo "shared_buffers = 256MB"
				fi
			} | as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
		fi
		port=$(free_port "${PG_PORTS[@]}") || die "no free port for PostgreSQL"
		log "starting PostgreSQL on 127.0.0.1:$port ($PGDATA_DIR)"
		if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 \
			-o "-p $port -k $PGSOCK -c listen_addresses=127.0.0.1" start >/dev/null; then
			tail -n 30 "$PGLOG" >&2 || true
			die "PostgreSQL did not start (log: $PGLOG)"
		fi
	fi
	if [[ -z $(as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = 'manacore'") ]]; then
		as_pg "$PGBIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'CREATE DATABASE manacore' >/dev/null
	fi
	PG_PORT=$port
}

pg_stop() {
	pg_bindir >/dev/null || return 0
	PGBIN=$(pg_bindir)
	pg_paths
	if pg_running; then
		log "stopping PostgreSQL ($PGDATA_DIR)"
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
	fi
	if [[ $PROFILE != dev ]]; then
		# Test and bench data is thrown away (initdb takes a second); this also keeps
		# /tmp clean when the cluster had to live there.
		rm -rf "$PGROOT"
		rmdir "/tmp/mana-$HASH/$PROFILE" "/tmp/mana-$HASH" 2>/dev/null || true
	fi
}

pg_status() {
	pg_bindir >/dev/null || {
		echo "postgres: not installed"
		return 0
	}
	PGBIN=$(pg_bindir)
	pg_paths
	if pg_running; then echo "postgres: running on 127.0.0.1:$(pg_port) ($PGDATA_DIR)"; else echo "postgres: stopped"; fi
}

# --------------------------------------------------------------------- Redis

redis_start() {
	ensure_cmd redis-server redis-server
	ensure_cmd redis-cli redis-tools
	mkdir -p "$RUN" "$LOGS" "$BASE/redis"
	local port pidfile=$RUN/redis.pid i
	if pid_alive "$pidfile" redis-server && [[ -s $RUN/redis.port ]]; then
		REDIS_PORT=$(<"$RUN/redis.port")
		REDIS_PID=$(<"$pidfile")
		log "Redis already running on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	port=$(free_port "${REDIS_PORTS[@]}") || die "no free port for Redis"
	local persist=(--save "" --appendonly no)
	if [[ $PROFILE != test ]]; then
		# Dev keeps its rate-limit and credit state across restarts; the
		# bench measures Redis as production runs it.
		persist=(--save "" --appendonly yes --appendfsync everysec)
	fi
	log "starting Redis on 127.0.0.1:$port"
	redis-server --bind 127.0.0.1 --port "$port" --dir "$BASE/redis" --daemonize yes \
		--pidfile "$pidfile" --logfile "$LOGS/redis.log" "${persist[@]}"
	for ((i = 0; i < 100; i++)); do
		if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
			echo "$port" >"$RUN/redis.port"
			REDIS_PORT=$port
			REDIS_PID=$(<"$pidfile")
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$LOGS/redis.log" >&2 || true
	die "Redis did not answer on 127.0.0.1:$port"
}

redis_stop() {
	stop_pidfile "$RUN/redis.pid" Redis
	rm -f "$RUN/redis.port"
	if [[ $PROFILE == bench ]]; then rm -rf "${BASE:?}/redis"; fi
}

redis_status() {
	if pid_alive "$RUN/redis.pid" redis-server; then
		echo "redis: running on 127.0.0.1:$(cat "$RUN/redis.port" 2>/dev/null)"
	else
		echo "redis: stopped"
	fi
}

# ---------------------------------------------------------------------- NATS

# nats_server NAME FSYNC: starts the nats-server NAME (nats or nats-nofsync)
# on a free port of its list; FSYNC=1 fsyncs every write. It sets
# SERVER_PORT, SERVER_MON_PORT and SERVER_PID.
nats_server() {
	local name=$1 fsync=$2 bin port mport server pidfile=$RUN/$1.pid conf=$BASE/$1.conf i sync="" ports mports
	bin=$(go_tool nats-server github.com/nats-io/nats-server/v2 github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION")
	mkdir -p "$RUN" "$LOGS" "$BASE/$name"
	if pid_alive "$pidfile" nats-server && [[ -s $RUN/$name.port ]]; then
		read -r SERVER_PORT SERVER_MON_PORT <"$RUN/$name.port"
		SERVER_PID=$(<"$pidfile")
		log "$name already running on 127.0.0.1:$SERVER_PORT"
		return 0
	fi
	if [[ $name == nats ]]; then
		ports=("${NATS_PORTS[@]}") mports=("${NATS_MON_PORTS[@]}")
	else
		[[ $PROFILE == bench ]] || die "nats-nofsync is for the bench profile only"
		ports=("${NATS_NOFSYNC_PORTS[@]}") mports=()
	fi
	port=$(free_port "${ports[@]}") || die "no free port for $name"
	mport=$(free_port "${mports[@]}") || die "no free port for the $name monitor"
	while [[ $mport == "$port" ]] || port_open "$mport"; do mport=$((mport + 1)); done
	# sync_interval: always makes JetStream fsync every write before it
	# acknowledges it. Jepsen's analysis of NATS 2.12.1 showed acknowledged
	# writes lost on power failure with the default (sync every 2 minutes); the
	# gateway releases a response only once its usage event is acknowledged, so
	# an acknowledgement must mean "on disk". nats-nofsync keeps the default,
	# to show what the per-write fsync costs; not a setting for production.
	if [[ $fsync == 1 ]]; then sync="sync_interval: always"; fi
	server=mana-$PROFILE
	if [[ $name != nats ]]; then server+=-$name; fi
	cat >"$conf" <<EOF
# written by .ci/servers.sh ($PROFILE profile); rewritten on every start
server_name: $server
listen: 127.0.0.1:$port
http: 127.0.0.1:$mport
pid_file: "$pidfile"
jetstream {
  store_dir: "$BASE/$name"
  $sync
}
EOF
	log "starting $name (JetStream) on 127.0.0.1:$port, monitor :$mport"
	setsid nohup "$bin" -c "$conf" >>"$LOGS/$name.log" 2>&1 </dev/null &
	for ((i = 0; i < 150; i++)); do
		if port_open "$port" && port_open "$mport" && [[ -s $pidfile ]]; then
			echo "$port $mport" >"$RUN/$name.port"
			SERVER_PORT=$port SERVER_MON_PORT=$mport SERVER_PID=$(<"$pidfile")
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$LOGS/$name.log" >&2 || true
	die "$name did not start on 127.0.0.1:$port"
}

nats_start() {
	nats_server nats 1
	NATS_PORT=$SERVER_PORT NATS_MON_PORT=$SERVER_MON_PORT NATS_PID=$SERVER_PID
}

nats_nofsync_start() {
	nats_server nats-nofsync 0
	NATS_NOFSYNC_PORT=$SERVER_PORT NATS_NOFSYNC_PID=$SERVER_PID
}

nats_stop() {
	local name
	for name in nats nats-nofsync; do
		stop_pidfile "$RUN/$name.pid" "$name"
		rm -f "$RUN/$name.port"
		if [[ $PROFILE == bench ]]; then rm -rf "${BASE:?}/$name"; fi
	done
}

nats_status() {
	local name
	for name in nats nats-nofsync; do
		if pid_alive "$RUN/$name.pid" nats-server; then
			echo "$name: running on 127.0.0.1:$(cut -d' ' -f1 "$RUN/$name.port" 2>/dev/null)"
		elif [[ $name == nats ]]; then
			echo "$name: stopped"
		fi
	done
}

# ---------------------------------------------------------------------- main

write_env() {
	local tmp=$ENV_FILE.tmp
	: >"$tmp"
	if [[ -n ${PG_PORT:-} ]]; then
		case $PROFILE in
		dev) echo "DATABASE_URL=postgres://postgres:postgres@127.0.0.1:$PG_PORT/manacore?sslmode=disable" >>"$tmp" ;;
		test) echo "TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable" >>"$tmp" ;;
		bench) echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable" >>"$tmp" ;;
		esac
	fi
	if [[ -n ${REDIS_PORT:-} ]]; then
		printf 'REDIS_HOST=127.0.0.1\nREDIS_PORT=%s\n' "$REDIS_PORT" >>"$tmp"
	fi
	if [[ -n ${NATS_PORT:-} ]]; then
		printf 'NATS_URL=nats://127.0.0.1:%s\nNATS_MONITOR_URL=http://127.0.0.1:%s\n' "$NATS_PORT" "$NATS_MON_PORT" >>"$tmp"
	fi
	if [[ -n ${NATS_NOFSYNC_PORT:-} ]]; then
		echo "NATS_NOFSYNC_URL=nats://127.0.0.1:$NATS_NOFSYNC_PORT" >>"$tmp"
	fi
	if [[ $PROFILE == bench ]]; then
		# The bench measures the servers' CPU and memory by pid, and the
		# disk's fsync latency in NATS's store.
		printf 'REDIS_PID=%s\nNATS_PID=%s\nNATS_NOFSYNC_PID=%s\nNATS_STORE_DIR=%s\n' \
			"${REDIS_PID:-}" "${NATS_PID:-}" "${NATS_NOFSYNC_PID:-}" "$BASE/nats" >>"$tmp"
	fi
	mv "$tmp" "$ENV_FILE"
}

mkdir -p "$BASE"
case $ACTION in
start)
	for c in "${COMPONENTS[@]}"; do
		case $c in
		pg) pg_start ;;
		redis) redis_start ;;
		nats) nats_start ;;
		nats-nofsync) nats_nofsync_start ;;
		*) usage ;;
		esac
	done
	write_env
	log "servers ($PROFILE) ready; settings in ${ENV_FILE#"$ROOT"/}:"
	sed 's/^/    /' "$ENV_FILE" >&2
	;;
stop)
	# Stop everything of the profile, whatever was named.
	nats_stop
	redis_stop
	pg_stop
	rm -f "$ENV_FILE"
	;;
status)
	pg_status
	redis_status
	nats_status
	;;
env)
	[[ -s $ENV_FILE ]] || die "no ${ENV_FILE#"$ROOT"/}: start the servers first ($0 start $PROFILE)"
	cat "$ENV_FILE"
	;;
*) usage ;;
esac
