package testenv

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRedisClusterServesEverySlotAndPromotesAReplica(t *testing.T) {
	start := time.Now()
	c := StartRedisCluster(t, 3, 1)
	t.Logf("six nodes up in %s", time.Since(start))
	cl := c.Client()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := cl.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	m := c.MasterOf("a")
	m.Stop()
	start = time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := cl.Get(ctx, "a").Result()
		if err == nil && v == "a" {
			break
		}
		if time.Now().After(deadline) {
			for _, n := range c.Nodes {
				if n.cmd != nil {
					out, _ := exec.Command("redis-cli", "-u", "redis://"+n.Addr, "cluster", "nodes").CombinedOutput()
					t.Logf("%s:\n%s", n.Addr, out)
				}
			}
			t.Fatalf("key a not served after its master died: %q %v", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("replica promoted and serving in %s", time.Since(start))
	if got := c.MasterOf("a"); got == m {
		t.Fatal("the dead master still serves the slot")
	}
}

func TestNATSClusterKeepsAnR3StreamThroughItsLeadersDeath(t *testing.T) {
	start := time.Now()
	c := StartNATSCluster(t, 3)
	t.Logf("three nodes up in %s", time.Since(start))
	nc, err := nats.Connect(c.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	// A new R3 stream answers once its replicas have elected a leader, which
	// may be a moment after CreateStream returns.
	if took, err := publishUntilAcked(ctx, js, "1"); err != nil {
		t.Fatalf("no publish to the new stream: %v", err)
	} else {
		t.Logf("new stream acknowledging in %s", took)
	}
	l := c.StreamLeader("S")
	if l == nil {
		t.Fatal("no stream leader")
	}
	l.Stop()
	took, err := publishUntilAcked(ctx, js, "2")
	if err != nil {
		t.Fatalf("no publish after the leader died: %v", err)
	}
	t.Logf("new leader acknowledging in %s", took)
	s, err := js.Stream(ctx, "S")
	if err != nil || s.CachedInfo().State.Msgs != 2 {
		t.Fatalf("stream after failover: %v %+v", err, s)
	}
}

// publishUntilAcked publishes data to subject s (message ID data) until an
// ack comes or ctx ends, and says how long it took. Each try has its own
// short deadline: a publish sent while the client reconnects, or to a leader
// that has just stepped down, may never be answered, and waiting all of ctx
// for that one reply would hide the new leader. The message ID makes the
// retries one message.
func publishUntilAcked(ctx context.Context, js jetstream.JetStream, data string) (time.Duration, error) {
	start := time.Now()
	for {
		try, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.Publish(try, "s", []byte(data), jetstream.WithMsgID(data))
		cancel()
		if err == nil {
			return time.Since(start), nil
		}
		if ctx.Err() != nil {
			return time.Since(start), err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
