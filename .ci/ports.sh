# shellcheck shell=bash
# The loopback ports of every profile, in one table: .ci/lib.sh sources it,
# so servers.sh, stack.sh, cluster.sh and bench.sh read their ports here and
# nowhere else. compose.yaml (container ports) and the docs quote the dev
# ports; change them together.
#
# A list is "preferred, then fallbacks": free_port takes the first free one,
# else any free port of 20000-29999. A single number is fixed (the stack
# fails when it is taken).
# shellcheck disable=SC2034 # read by the scripts that source lib.sh

# ---- servers (.ci/servers.sh start PROFILE): PostgreSQL, Redis, NATS and its monitor
# dev: `make run`, `make up`, `make up-cluster` (its PostgreSQL)
DEV_PG_PORTS=(5432 55432)
DEV_REDIS_PORTS=(6379 56379)
DEV_NATS_PORTS=(4222 54222)
DEV_NATS_MON_PORTS=(8222 58222)
# test: `make test`
TEST_PG_PORTS=(55433)
TEST_REDIS_PORTS=(56380)
TEST_NATS_PORTS=(54223)
TEST_NATS_MON_PORTS=(58223)
# bench: `make bench`; nats-nofsync is its diagnostic NATS with JetStream's
# default sync interval
BENCH_PG_PORTS=(25470)
BENCH_REDIS_PORTS=(26470)
BENCH_NATS_PORTS=(24470)
BENCH_NATS_MON_PORTS=(24472)
BENCH_NATS_NOFSYNC_PORTS=(24471)

# ---- the binaries of `make run` / `make up` (.ci/stack.sh)
GATEWAY_PORT=3030
AUTHDEV_PORT=3001
STT_PORT=3020
SEARCH_PORT=3021
TTS_PORT=3022
WEBHOOKDEV_PORT=3040
BILLING_METRICS_PORT=9101
AGGREGATOR_METRICS_PORT=9102
PROMETHEUS_PORTS=(9090 59090) # MONITORING=1

# ---- `make up-cluster` (.ci/cluster.sh): nginx on GATEWAY_PORT in front of
# two gateways; node n (1-3) of each server cluster listens on BASE+n
CLUSTER_GATEWAY_PORTS=(3031 3032)
CLUSTER_NATS_BASE=4221      # clients 4222-4224
CLUSTER_NATS_ROUTE_BASE=6221 # routes 6222-6224
CLUSTER_NATS_MON_BASE=8221  # monitors 8222-8224
CLUSTER_REDIS_BASE=7000     # Redis Cluster nodes 7001-7003
CLUSTER_REDIS_BUS_BASE=14000 # their cluster bus 14001-14003

# ---- `CLUSTER=1 make bench` (.ci/bench.sh): preferred ports, node n at BASE+n
BENCH_CLUSTER_NATS_BASE=24480
BENCH_CLUSTER_NATS_ROUTE_BASE=24490
BENCH_CLUSTER_NATS_MON_BASE=24500
BENCH_CLUSTER_REDIS_BASE=26480
BENCH_CLUSTER_REDIS_BUS_BASE=26490
