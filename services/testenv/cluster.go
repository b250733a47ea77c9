package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of redis-server processes owned by one
// test: masters created with `redis-cli --cluster create`, each with its
// replicas. A node that is stopped stays out until Start.
type RedisCluster struct {
	t     testing.TB
	Nodes []*Redis
	Addrs []string // every node's address, the client's seeds
}

// NodeTimeout is the cluster's cluster-node-timeout: how long a master may
// be unreachable before its replica takes over (or its slots are down).
const NodeTimeout = time.Second

// StartRedisCluster starts masters×(1+replicas) cluster-enabled
// redis-server processes on loopback ports (the cluster bus port too),
// joins them with redis-cli and returns once every node reports
// cluster_state:ok and every replica is in sync.
func StartRedisCluster(t testing.TB, masters, replicas int) *RedisCluster {
	t.Helper()
	if masters < 3 {
		t.Fatal("a Redis Cluster needs at least three masters")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found: run the tests with `make test`, which installs redis-server and redis-cli")
	}
	c := &RedisCluster{t: t}
	n := masters * (1 + replicas)
	var mu sync.Mutex
	var wg sync.WaitGroup
	c.Nodes = make([]*Redis, n)
	for i := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := startRedis(t, func() []string {
				return []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
					"--cluster-port", strconv.Itoa(FreePort(t)),
					"--cluster-node-timeout", strconv.Itoa(int(NodeTimeout.Milliseconds())),
					// A replica of a master that went away takes over at once.
					"--cluster-replica-validity-factor", "0",
					// Keys of live masters stay served while one shard is down.
					"--cluster-require-full-coverage", "no",
					// A replica syncs at once, not after the default 5 s.
					"--repl-diskless-sync-delay", "0"}
			})
			mu.Lock()
			c.Nodes[i] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, r := range c.Nodes {
		c.Addrs = append(c.Addrs, r.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK(60 * time.Second)
	return c
}

// WaitOK waits until every running node reports cluster_state:ok, knows
// every slot, and every running replica's link to its master is up.
func (c *RedisCluster) WaitOK(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		bad := c.notOK()
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("redis cluster not ok after %s: %s", timeout, bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *RedisCluster) notOK() string {
	for _, r := range c.Nodes {
		if r.cmd == nil {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := cl.ClusterInfo(ctx).Result()
		repl := ""
		if err == nil {
			repl, err = cl.Info(ctx, "replication").Result()
		}
		cancel()
		_ = cl.Close()
		switch {
		case err != nil:
			return fmt.Sprintf("%s: %v", r.Addr, err)
		case infoField(info, "cluster_state") != "ok" || infoField(info, "cluster_slots_ok") != "16384":
			return fmt.Sprintf("%s: cluster_state %s, slots ok %s", r.Addr, infoField(info, "cluster_state"), infoField(info, "cluster_slots_ok"))
		case infoField(repl, "role") == "slave" && infoField(repl, "master_link_status") != "up":
			return fmt.Sprintf("%s: replica link %s", r.Addr, infoField(repl, "master_link_status"))
		}
	}
	return ""
}

// Client returns a cluster client seeded with every node, closed when the
// test ends. It reloads the slot map every second, as the gateway's does:
// go-redis otherwise keeps sending a dead master's slots to it for a minute.
func (c *RedisCluster) Client() *redis.ClusterClient {
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ClusterStateReloadInterval: time.Second})
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// MasterOf returns the node that serves key's hash slot now.
func (c *RedisCluster) MasterOf(key string) *Redis {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, r := range c.Nodes {
		if r.cmd == nil {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: r.Addr})
		slot, err := cl.ClusterKeySlot(ctx, key).Result()
		var shards []redis.ClusterShard
		if err == nil {
			shards, err = cl.ClusterShards(ctx).Result()
		}
		_ = cl.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			for _, sr := range sh.Slots {
				if sr.Start > slot || slot > sr.End {
					continue
				}
				for _, sn := range sh.Nodes {
					if sn.Role != "master" || sn.Health != "online" {
						continue
					}
					for _, n := range c.Nodes {
						if n.Addr == fmt.Sprintf("%s:%d", sn.IP, sn.Port) {
							return n
						}
					}
				}
			}
		}
	}
	c.t.Fatalf("no node serves the slot of %q", key)
	return nil
}

// FlushAll empties every master (FLUSHALL on a cluster client reaches one).
func (c *RedisCluster) FlushAll(ctx context.Context, cl *redis.ClusterClient) error {
	return cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
}

// NATSCluster is a JetStream cluster of embedded nats-servers, routed on
// loopback, owned by one test.
type NATSCluster struct {
	t     testing.TB
	Nodes []*NATS
	// URL lists every node's client URL, comma-separated, as NATS_URL takes it.
	URL string
}

// StartNATSCluster starts n nats-servers (the Go module) with JetStream
// and full-mesh routes and returns once the JetStream meta group has a
// leader that every node follows.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t}
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range ports {
		ports[i] = FreePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	dir := t.TempDir()
	var urls []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	c.Nodes = make([]*NATS, n)
	for i := range n {
		node := &NATS{t: t}
		node.opts = server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoLog:      true,
			NoSigs:     true,
			SyncAlways: true,
			MaxPayload: 1 << 20,
			Cluster:    server.ClusterOpts{Name: "mana-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		c.Nodes[i] = node
		t.Cleanup(func() {
			node.stop(false)
			node.hold.release()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			node.Start()
			mu.Lock()
			defer mu.Unlock()
			urls = append(urls, node.URL)
		}()
	}
	wg.Wait()
	c.URL = strings.Join(urls, ",")
	c.WaitReady(60 * time.Second)
	return c
}

// WaitReady waits until a running node leads the JetStream meta group and
// every running node is current with it.
func (c *NATSCluster) WaitReady(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		leader, current := false, true
		for _, n := range c.Nodes {
			if n.srv == nil {
				continue
			}
			leader = leader || n.srv.JetStreamIsLeader()
			current = current && n.srv.JetStreamIsCurrent()
		}
		if leader && current {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("JetStream cluster not ready after %s (leader %v, all current %v)", timeout, leader, current)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StreamLeader returns the running node that leads the stream, or nil.
func (c *NATSCluster) StreamLeader(stream string) *NATS {
	for _, n := range c.Nodes {
		if n.srv != nil && n.srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return n
		}
	}
	return nil
}
