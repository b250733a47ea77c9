-- +goose Up
-- Credit grants: finance or an admin adds credits to a key for one period.
-- A grant is an event on the usage stream like a call, so every consumer
-- sees it; these columns are where each one keeps it.

-- Owned by the gateway's management API: one row per grant, written before
-- its event is published. It answers a repeated Idempotency-Key (the same
-- actor and key, with request_hash telling the same body from another) and
-- lets an event whose publishing failed be published again.
CREATE TABLE api_gateway.credit_grants (
    event_id        text        PRIMARY KEY, -- the grant's usage event (ULID)
    key_id          uuid        NOT NULL,
    owner_id        text        NOT NULL,
    actor           text        NOT NULL,
    idempotency_key text,
    request_hash    bytea       NOT NULL,
    request_id      text        NOT NULL,
    credits         bigint      NOT NULL CHECK (credits > 0),
    reason          text        NOT NULL,
    period          date        NOT NULL, -- first day of the credit month (UTC)
    tier            text        NOT NULL,
    monthly_credits bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    published_at    timestamptz,
    UNIQUE (actor, idempotency_key)
);
CREATE INDEX credit_grants_key_period_idx ON api_gateway.credit_grants (key_id, period);
CREATE INDEX credit_grants_unpublished_idx ON api_gateway.credit_grants (created_at) WHERE published_at IS NULL;

-- Owned by the billing worker: a grant's ledger row has credits 0 and the
-- credits it added in granted; a period's balance is
-- granted (the monthly grant) + grants - used.
ALTER TABLE api_gateway.credit_ledger ADD COLUMN granted bigint NOT NULL DEFAULT 0 CHECK (granted >= 0);
ALTER TABLE api_gateway.credit_balances ADD COLUMN grants bigint NOT NULL DEFAULT 0;

-- Owned by the aggregator: a grant is a row of endpoint credits.grant with
-- the credits it added in granted (and 0 requests in the daily row).
ALTER TABLE api_gateway.api_usage ADD COLUMN granted bigint NOT NULL DEFAULT 0;
ALTER TABLE api_gateway.api_usage_daily ADD COLUMN granted bigint NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE api_gateway.api_usage_daily DROP COLUMN granted;
ALTER TABLE api_gateway.api_usage DROP COLUMN granted;
ALTER TABLE api_gateway.credit_balances DROP COLUMN grants;
ALTER TABLE api_gateway.credit_ledger DROP COLUMN granted;
DROP TABLE api_gateway.credit_grants;
