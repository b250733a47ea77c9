-- +goose Up
-- Owned by the gateway's management API: every change made through it, one
-- row per change, written in the change's transaction. Append-only: a
-- trigger refuses UPDATE and DELETE. hash is SHA-256 over prev_hash and the
-- row's fields (package audit says how), so a removed or edited row breaks
-- the chain that `make audit-verify` checks. before and after never hold a
-- secret.
CREATE TABLE api_gateway.audit_log (
    seq         bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    owner_id    text        NOT NULL,
    request_id  text        NOT NULL,
    action      text        NOT NULL,
    target_type text        NOT NULL,
    target_id   text        NOT NULL,
    before      jsonb,
    after       jsonb,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL UNIQUE
);
CREATE INDEX audit_log_owner_idx ON api_gateway.audit_log (owner_id, at);
CREATE INDEX audit_log_at_idx ON api_gateway.audit_log (at);

-- +goose StatementBegin
CREATE FUNCTION api_gateway.audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'api_gateway.audit_log is append-only';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON api_gateway.audit_log
    FOR EACH ROW EXECUTE FUNCTION api_gateway.audit_log_append_only();

-- +goose Down
DROP TABLE api_gateway.audit_log;
DROP FUNCTION api_gateway.audit_log_append_only();
