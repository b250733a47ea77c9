-- +goose Up
-- The trace of the call each usage row came from (W3C trace ID, 32 hex
-- digits; empty when tracing was off), so a row finance asks about leads
-- back to the call's spans.
ALTER TABLE api_gateway.api_usage ADD COLUMN trace_id text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE api_gateway.api_usage DROP COLUMN trace_id;
