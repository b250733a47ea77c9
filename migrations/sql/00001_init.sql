-- +goose Up
CREATE SCHEMA IF NOT EXISTS api_gateway;

-- Owned by the gateway: the keys and their configuration. Only a hash of the
-- secret is stored; prev_key_hash keeps the old hash during a regenerate grace period.
CREATE TABLE api_gateway.api_keys (
    id                    uuid PRIMARY KEY,
    owner_id              text        NOT NULL,
    name                  text        NOT NULL,
    key_prefix            text        NOT NULL,
    key_hash              bytea       NOT NULL UNIQUE,
    prev_key_hash         bytea       UNIQUE,
    prev_key_expires_at   timestamptz,
    tier                  text        NOT NULL,
    active                boolean     NOT NULL DEFAULT true,
    rate_limit_per_minute integer     NOT NULL CHECK (rate_limit_per_minute > 0),
    monthly_credits       bigint      NOT NULL CHECK (monthly_credits >= 0),
    expires_at            timestamptz,
    last_used_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
CREATE INDEX api_keys_owner_idx ON api_gateway.api_keys (owner_id, created_at, id) WHERE deleted_at IS NULL;

-- Owned by the billing worker: one row per usage event, keyed by its ID, so a
-- redelivered or republished event can never be charged twice.
CREATE TABLE api_gateway.credit_ledger (
    event_id     text        PRIMARY KEY,
    key_id       uuid        NOT NULL,
    owner_id     text        NOT NULL,
    period       date        NOT NULL, -- first day of the credit month (UTC)
    endpoint     text        NOT NULL,
    credits      bigint      NOT NULL CHECK (credits >= 0),
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    stream_seq   bigint      NOT NULL
);
CREATE INDEX credit_ledger_key_period_idx ON api_gateway.credit_ledger (key_id, period);

-- Owned by the billing worker: credits used per key and month, updated in the
-- same transaction as the ledger rows it sums. balance = granted - used.
CREATE TABLE api_gateway.credit_balances (
    key_id       uuid        NOT NULL,
    period       date        NOT NULL,
    granted      bigint      NOT NULL,
    used         bigint      NOT NULL DEFAULT 0,
    requests     bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period)
);

-- Owned by the billing worker and the aggregator: messages that can never be
-- processed (undecodable or invalid), kept with the reason instead of dropped.
CREATE TABLE api_gateway.dead_letters (
    id          bigserial   PRIMARY KEY,
    consumer    text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    subject     text        NOT NULL,
    msg_id      text,
    payload     bytea       NOT NULL,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, stream_seq)
);

-- Owned by the aggregator: one row per event, partitioned by month of the
-- event's time so old months are detached and dropped without locks.
CREATE TABLE api_gateway.api_usage (
    event_id     text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    request_id   text        NOT NULL,
    key_id       uuid        NOT NULL,
    owner_id     text        NOT NULL,
    tier         text        NOT NULL,
    endpoint     text        NOT NULL,
    status       integer     NOT NULL,
    credits      bigint      NOT NULL,
    units        bigint      NOT NULL,
    unit         text        NOT NULL,
    latency_us   bigint      NOT NULL,
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE api_gateway.api_usage_default PARTITION OF api_gateway.api_usage DEFAULT;
CREATE INDEX api_usage_key_time_idx ON api_gateway.api_usage (key_id, occurred_at);

-- Owned by the aggregator: the daily rollup finance reads. One row per UTC day
-- (of the event's time), key and endpoint.
CREATE TABLE api_gateway.api_usage_daily (
    day          date        NOT NULL,
    key_id       uuid        NOT NULL,
    owner_id     text        NOT NULL,
    endpoint     text        NOT NULL,
    requests     bigint      NOT NULL DEFAULT 0,
    credits      bigint      NOT NULL DEFAULT 0,
    units        bigint      NOT NULL DEFAULT 0,
    errors       bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, endpoint)
);
CREATE INDEX api_usage_daily_owner_idx ON api_gateway.api_usage_daily (owner_id, day);

-- +goose Down
DROP SCHEMA api_gateway CASCADE;
