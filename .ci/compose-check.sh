#!/usr/bin/env bash
# Validates compose.yaml with `docker compose config` (no Docker engine needed).
# When the docker CLI has no compose plugin, builds Docker Compose from its Go
# module into .data/bin/docker-compose once (about two minutes) and uses that.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

COMPOSE_MODULE=github.com/docker/compose/v2
COMPOSE_VERSION=v2.40.3

compose=()
if docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
else
	bin=$TOOLBIN/docker-compose
	if [[ ! -x $bin ]] || [[ $("$bin" version --short 2>/dev/null) != "${COMPOSE_VERSION#v}" ]]; then
		command -v go >/dev/null 2>&1 || die "go is not installed"
		log "building docker-compose $COMPOSE_VERSION into .data/bin (no compose plugin for the docker CLI here)"
		# `go install module@version` refuses modules with exclude directives, so
		# build inside the downloaded module instead.
		dir=$(cd / && GOWORK=off GOFLAGS=-mod=mod go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[[ -d $dir ]] || die "could not download $COMPOSE_MODULE@$COMPOSE_VERSION"
		mkdir -p "$TOOLBIN"
		(cd "$dir" && GOWORK=off GOFLAGS=-buildvcs=false CGO_ENABLED=0 go build -trimpath \
			-ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" -o "$bin" ./cmd)
	fi
	compose=("$bin")
fi

log "${compose[*]} -f compose.yaml config -q"
"${compose[@]}" -f compose.yaml config -q
# The default profile: the webhook receiver for development, which the
# billing worker may reach by its compose host name.
services=$("${compose[@]}" -f compose.yaml config --services)
grep -qx webhookdev <<<"$services" || die "the default profile has no webhookdev service"
grep -qF "WEBHOOK_ALLOW_HOSTS: webhookdev,127.0.0.1,localhost" <<<"$("${compose[@]}" -f compose.yaml config billing-worker)" ||
	die "the billing worker's WEBHOOK_ALLOW_HOSTS does not allow webhookdev"
log "${compose[*]} -f compose.yaml --profile monitoring config -q"
"${compose[@]}" -f compose.yaml --profile monitoring config -q
# The monitoring profile's services, and the files they mount from deploy/.
services=$("${compose[@]}" -f compose.yaml --profile monitoring config --services)
for s in prometheus grafana; do
	grep -qx "$s" <<<"$services" || die "the monitoring profile has no $s service"
done
for f in deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml deploy/grafana/provisioning \
	deploy/grafana/dashboards/mana.json; do
	[[ -e $f ]] || die "compose.yaml mounts $f, which is missing"
done
log "${compose[*]} -f compose.yaml --profile cluster config -q"
"${compose[@]}" -f compose.yaml --profile cluster config -q
# The cluster profile: three NATS servers, three Redis nodes, two gateways
# behind the load balancer on :3030, each gateway on the cluster by settings.
services=$("${compose[@]}" -f compose.yaml --profile cluster config --services)
for s in nats-1 nats-2 nats-3 redis-1 redis-2 redis-3 redis-cluster-create gateway-1 gateway-2 \
	billing-worker-cluster aggregator-cluster lb; do
	grep -qx "$s" <<<"$services" || die "the cluster profile has no $s service"
done
cfg=$("${compose[@]}" -f compose.yaml --profile cluster config)
for want in "REDIS_ADDRS: redis-1:6379,redis-2:6379,redis-3:6379" "USAGE_STREAM_REPLICAS: \"3\"" \
	"server_name: \$\$NATS_NAME" "server gateway-2:3030"; do # config prints $ as $$
	grep -qF "$want" <<<"$cfg" || die "the cluster profile lacks: $want"
done
log "compose.yaml is valid ($("${compose[@]}" version --short 2>/dev/null || true))"
