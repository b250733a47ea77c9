#!/usr/bin/env bash
# Installs (when missing), starts and stops the servers the project needs:
# PostgreSQL, Redis and NATS (JetStream). Two profiles keep apart:
#   dev   data in .data/,      ports 5432/6379/4222 (8222) when free, else 55432/56379/54222 (58222);
#         used by `make run`/`make up`; the chosen URLs go to .data/stack.env
#   test  data in .data/test/, ports 55433/56380/54223 (58223) or any free one;
#         used by `make test`; the URLs go to .data/test/stack.env
#
# usage: .ci/servers.sh start|stop|status|env [dev|test] [pg] [redis] [nats]
# With no server named: dev = pg redis nats, test = pg (the tests start their
# own redis-server and an embedded NATS per test).
#
# PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
# Its data lives in .data/<profile>/pg when that user can reach the project
# folder, else in /tmp/mana-<hash of the project path>/<profile>/pg.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	echo "usage: $0 start|stop|status|env [dev|test] [pg] [redis] [nats]" >&2
	exit 2
}

ACTION=${1:-}
[[ -n $ACTION ]] || usage
shift
PROFILE=dev
if [[ ${1:-} == dev || ${1:-} == test ]]; then
	PROFILE=$1
	shift
fi
COMPONENTS=("$@")
if ((${#COMPONENTS[@]} == 0)); then
	if [[ $PROFILE == dev ]]; then COMPONENTS=(pg redis nats); else COMPONENTS=(pg); fi
fi

if [[ $PROFILE == dev ]]; then
	BASE=$DATA
	PG_PORTS=(5432 55432)
	REDIS_PORTS=(6379 56379)
	NATS_PORTS=(4222 54222)
	NATS_MON_PORTS=(8222 58222)
else
	BASE=$DATA/test
	PG_PORTS=(55433)
	REDIS_PORTS=(56380)
	NATS_PORTS=(54223)
	NATS_MON_PORTS=(58223)
fi
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
	if [[ $PROFILE == test ]]; then
		# Test data is thrown away (initdb takes a second); this also keeps
		# /tmp clean when the cluster had to live there.
		rm -rf "$PGROOT"
		rmdir "/tmp/mana-$HASH/test" "/tmp/mana-$HASH" 2>/dev/null || true
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
		log "Redis already running on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	port=$(free_port "${REDIS_PORTS[@]}") || die "no free port for Redis"
	local persist=(--save "" --appendonly no)
	if [[ $PROFILE == dev ]]; then
		# Dev keeps its rate-limit and credit state across restarts.
		persist=(--save "" --appendonly yes --appendfsync everysec)
	fi
	log "starting Redis on 127.0.0.1:$port"
	redis-server --bind 127.0.0.1 --port "$port" --dir "$BASE/redis" --daemonize yes \
		--pidfile "$pidfile" --logfile "$LOGS/redis.log" "${persist[@]}"
	for ((i = 0; i < 100; i++)); do
		if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
			echo "$port" >"$RUN/redis.port"
			REDIS_PORT=$port
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
}

redis_status() {
	if pid_alive "$RUN/redis.pid" redis-server; then
		echo "redis: running on 127.0.0.1:$(cat "$RUN/redis.port" 2>/dev/null)"
	else
		echo "redis: stopped"
	fi
}

# ---------------------------------------------------------------------- NATS

nats_start() {
	local bin port mport pidfile=$RUN/nats.pid conf=$BASE/nats.conf i
	bin=$(go_tool nats-server github.com/nats-io/nats-server/v2 github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION")
	mkdir -p "$RUN" "$LOGS" "$BASE/nats"
	if pid_alive "$pidfile" nats-server && [[ -s $RUN/nats.port ]]; then
		read -r NATS_PORT NATS_MON_PORT <"$RUN/nats.port"
		log "NATS already running on 127.0.0.1:$NATS_PORT"
		return 0
	fi
	port=$(free_port "${NATS_PORTS[@]}") || die "no free port for NATS"
	mport=$(free_port "${NATS_MON_PORTS[@]}") || die "no free port for the NATS monitor"
	# sync_interval: always makes JetStream fsync every write before it
	# acknowledges it. Jepsen's analysis of NATS 2.12.1 showed acknowledged
	# writes lost on power failure with the default (sync every 2 minutes); the
	# gateway releases a response only once its usage event is acknowledged, so
	# an acknowledgement must mean "on disk".
	cat >"$conf" <<EOF
# written by .ci/servers.sh ($PROFILE profile); rewritten on every start
server_name: mana-$PROFILE
listen: 127.0.0.1:$port
http: 127.0.0.1:$mport
pid_file: "$pidfile"
jetstream {
  store_dir: "$BASE/nats"
  sync_interval: always
}
EOF
	log "starting NATS (JetStream) on 127.0.0.1:$port, monitor :$mport"
	setsid nohup "$bin" -c "$conf" >>"$LOGS/nats.log" 2>&1 </dev/null &
	for ((i = 0; i < 150; i++)); do
		if port_open "$port" && port_open "$mport"; then
			echo "$port $mport" >"$RUN/nats.port"
			NATS_PORT=$port
			NATS_MON_PORT=$mport
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$LOGS/nats.log" >&2 || true
	die "NATS did not start on 127.0.0.1:$port"
}

nats_stop() {
	stop_pidfile "$RUN/nats.pid" NATS
	rm -f "$RUN/nats.port"
}

nats_status() {
	if pid_alive "$RUN/nats.pid" nats-server; then
		echo "nats: running on 127.0.0.1:$(cut -d' ' -f1 "$RUN/nats.port" 2>/dev/null)"
	else
		echo "nats: stopped"
	fi
}

# ---------------------------------------------------------------------- main

write_env() {
	local tmp=$ENV_FILE.tmp
	: >"$tmp"
	if [[ -n ${PG_PORT:-} ]]; then
		if [[ $PROFILE == dev ]]; then
			echo "DATABASE_URL=postgres://postgres:postgres@127.0.0.1:$PG_PORT/manacore?sslmode=disable" >>"$tmp"
		else
			echo "TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable" >>"$tmp"
		fi
	fi
	if [[ -n ${REDIS_PORT:-} ]]; then
		printf 'REDIS_HOST=127.0.0.1\nREDIS_PORT=%s\n' "$REDIS_PORT" >>"$tmp"
	fi
	if [[ -n ${NATS_PORT:-} ]]; then
		printf 'NATS_URL=nats://127.0.0.1:%s\nNATS_MONITOR_URL=http://127.0.0.1:%s\n' "$NATS_PORT" "$NATS_MON_PORT" >>"$tmp"
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
