package server

import (
	"github.com/redis/go-redis/v9"

	"github.com/mana/apigw/gateway/internal/config"
)

// openRedis returns a client of the Redis the settings name: a Redis
// Cluster when REDIS_ADDRS lists its nodes, one server otherwise. Every
// caller takes it as redis.UniversalClient; the quota keys of one API key
// share a hash slot, so each script runs on one shard.
func openRedis(cfg config.Config, poolSize, minIdle int) redis.UniversalClient {
	dial, rw := cfg.Tuning.RedisDialTimeout, cfg.Tuning.RedisIOTimeout
	const proto = 2 // RESP2: the gateway uses no RESP3 feature, and RESP3's push notification check before every reply cost a fifth of each decision's CPU in the handler-chain profile
	if len(cfg.RedisClusterAddrs) > 0 {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: cfg.RedisClusterAddrs, Password: cfg.RedisPassword,
			DialTimeout: dial, ReadTimeout: rw, WriteTimeout: rw,
			// Per node: each master takes its share of the keys.
			PoolSize: poolSize, MinIdleConns: minIdle,
			Protocol: proto,
			// go-redis learns of a failover from MOVED replies or this
			// reload (default a minute): until then a dead master's slots
			// would be sent to it. One CLUSTER SLOTS a second is cheap.
			ClusterStateReloadInterval: cfg.Tuning.RedisClusterReload,
		})
	}
	return redis.NewClient(&redis.Options{
		Addr: cfg.RedisAddr, Password: cfg.RedisPassword,
		DialTimeout: dial, ReadTimeout: rw, WriteTimeout: rw,
		PoolSize: poolSize, MinIdleConns: minIdle,
		Protocol: proto,
	})
}
