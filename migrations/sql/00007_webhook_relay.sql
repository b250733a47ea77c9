-- +goose Up
-- Webhook events go from the outbox to the JetStream stream WEBHOOKS, and
-- the deliveries are made from there. relayed_at is when the relay had the
-- event stored on the stream (NULL: still to publish; the relay reads the
-- oldest first). threshold is what credits.threshold events are for (0 for
-- every other type): the endpoints whose thresholds include it get one.
-- Events written before this migration already have their deliveries, so
-- they count as relayed.
ALTER TABLE api_gateway.webhook_events
    ADD COLUMN relayed_at timestamptz,
    ADD COLUMN threshold  integer NOT NULL DEFAULT 0;
UPDATE api_gateway.webhook_events SET relayed_at = created_at;
UPDATE api_gateway.webhook_events SET threshold = (payload->'data'->>'threshold')::integer
    WHERE type = 'credits.threshold' AND payload->'data'->>'threshold' ~ '^[0-9]+$';
CREATE INDEX webhook_events_unrelayed_idx ON api_gateway.webhook_events (created_at, id) WHERE relayed_at IS NULL;
-- For pruning the settled events after the retention.
CREATE INDEX webhook_events_created_idx ON api_gateway.webhook_events (created_at);
CREATE INDEX webhook_deliveries_event_idx ON api_gateway.webhook_deliveries (event_id);

-- A sender holds a delivery it claimed until leased_until: no other sender
-- takes it meanwhile, and a retry asked for through the management API is
-- refused (409). When the sender dies mid-send the lease runs out and the
-- delivery is sent again under the same webhook-id.
ALTER TABLE api_gateway.webhook_deliveries ADD COLUMN leased_until timestamptz;

-- +goose Down
ALTER TABLE api_gateway.webhook_deliveries DROP COLUMN leased_until;
DROP INDEX api_gateway.webhook_deliveries_event_idx;
DROP INDEX api_gateway.webhook_events_created_idx;
DROP INDEX api_gateway.webhook_events_unrelayed_idx;
ALTER TABLE api_gateway.webhook_events DROP COLUMN threshold, DROP COLUMN relayed_at;
