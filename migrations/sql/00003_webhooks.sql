-- +goose Up
-- Owned by the gateway's management API: where an owner wants to be told
-- about its keys. secret is the Standard Webhooks signing secret (whsec_ +
-- base64). It is stored as it was issued because the delivery worker needs
-- the key itself to compute each HMAC (a hash would not sign); the column is
-- read only by the delivery worker and never returned after the create answer.
-- events empty means every event type; thresholds are whole percents of a
-- key's grant for credits.threshold.
CREATE TABLE api_gateway.webhook_endpoints (
    id              uuid        PRIMARY KEY,
    owner_id        text        NOT NULL,
    url             text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    events          text[]      NOT NULL DEFAULT '{}',
    thresholds      integer[]   NOT NULL DEFAULT '{50,80,100}',
    secret          text        NOT NULL,
    failing_since   timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX webhook_endpoints_owner_idx ON api_gateway.webhook_endpoints (owner_id, created_at, id) WHERE deleted_at IS NULL;

-- The outbox: one row per event, written in the same transaction as the
-- change it reports (a ledger batch, a key mutation). payload is the body
-- every endpoint receives, {type, timestamp, data}; id is its webhook-id.
CREATE TABLE api_gateway.webhook_events (
    id          text        PRIMARY KEY,
    owner_id    text        NOT NULL,
    type        text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per event and endpoint that subscribed to it when it was written.
-- The delivery worker claims due rows, sends, and records the outcome;
-- a crash mid-send leaves the row due, so it is sent again under the same
-- webhook-id.
CREATE TABLE api_gateway.webhook_deliveries (
    endpoint_id      uuid        NOT NULL REFERENCES api_gateway.webhook_endpoints (id),
    event_id         text        NOT NULL REFERENCES api_gateway.webhook_events (id),
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON api_gateway.webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON api_gateway.webhook_deliveries (endpoint_id, created_at DESC);

-- Owned by the billing worker: the alerts already raised, one row per key,
-- period, kind and threshold (0 for credits.exhausted). Inserting it in the
-- ledger's transaction is what makes each alert happen once, whatever is
-- redelivered, restarted or replayed.
CREATE TABLE api_gateway.credit_alerts (
    key_id      uuid        NOT NULL,
    period      date        NOT NULL,
    kind        text        NOT NULL,
    threshold   integer     NOT NULL,
    event_id    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period, kind, threshold)
);

-- +goose Down
DROP TABLE api_gateway.credit_alerts;
DROP TABLE api_gateway.webhook_deliveries;
DROP TABLE api_gateway.webhook_events;
DROP TABLE api_gateway.webhook_endpoints;
