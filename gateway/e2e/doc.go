// Package e2e holds the end-to-end tests: the real binaries (gateway,
// billing worker, aggregator) as processes against real Postgres, Redis and
// NATS, with the stand-in backends and the dev auth issuer in process.
package e2e
