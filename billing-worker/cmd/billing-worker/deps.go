package main

import (
	_ "github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/mana/apigw/proto/usage/v1"
	_ "github.com/mana/apigw/migrations"
	_ "github.com/mana/apigw/services/testenv"
	_ "google.golang.org/protobuf/proto"
)

func main() {}
