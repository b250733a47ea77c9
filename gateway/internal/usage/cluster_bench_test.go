package usage

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	usagev1 "github.com/mana/apigw/proto/usage/v1"
	"github.com/mana/apigw/services/testenv"
)

// BenchmarkPublishReplicas is what the stream's replication costs the
// gateway: the group-committing publisher, 32 concurrent calls per CPU, on
// one server and on a three-node JetStream cluster at one and three
// replicas (every server fsyncs each write). Compare ns/op (a served call's
// share of the wait) and events/msg across the three.
func BenchmarkPublishReplicas(b *testing.B) {
	for _, tc := range []struct {
		name     string
		cluster  bool
		replicas int
	}{{"single-R1", false, 1}, {"cluster-R1", true, 1}, {"cluster-R3", true, 3}} {
		b.Run(tc.name, func(b *testing.B) {
			url := ""
			if tc.cluster {
				url = testenv.StartNATSCluster(b, 3).URL
			} else {
				url = testenv.StartNATS(b).URL
			}
			nc, err := nats.Connect(url)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			stream, err := usagev1.EnsureStreamWith(ctx, js, usagev1.StreamOptions{Replicas: tc.replicas})
			if err != nil {
				b.Fatal(err)
			}
			spool, err := OpenSpool(b.TempDir(), 1<<28, testenv.Logger(b))
			if err != nil {
				b.Fatal(err)
			}
			defer spool.Close()
			p, err := NewPublisher(PublisherConfig{AckTimeout: 5 * time.Second, DrainInterval: time.Second, GatewayID: "bench"}, nc, js, spool, testenv.Logger(b), nil)
			if err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := p.Publish(ctx, event()); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			p.Wait()
			info, err := stream.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if info.State.Msgs > 0 {
				b.ReportMetric(float64(b.N)/float64(info.State.Msgs), "events/msg")
			}
			if spool.Size() > 0 {
				b.Fatalf("%d bytes left in the spool: the stream did not acknowledge every batch", spool.Size())
			}
		})
	}
}
