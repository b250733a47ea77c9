-- +goose Up
-- A message of the group commit holds many events, and one of them may be a
-- dead letter while the rest of its batch is applied: dead letters are kept
-- per (consumer, stream sequence, event index). event_index is the event's
-- position in its UsageBatch, or -1 when the whole message is the dead letter
-- (every row written before batches existed). event_id is the dead event's ID
-- when it is known.
ALTER TABLE api_gateway.dead_letters
    ADD COLUMN event_index integer NOT NULL DEFAULT -1 CHECK (event_index >= -1),
    ADD COLUMN event_id    text;
ALTER TABLE api_gateway.dead_letters DROP CONSTRAINT dead_letters_consumer_stream_seq_key;
ALTER TABLE api_gateway.dead_letters
    ADD CONSTRAINT dead_letters_consumer_stream_seq_event_index_key UNIQUE (consumer, stream_seq, event_index);

-- +goose Down
ALTER TABLE api_gateway.dead_letters DROP CONSTRAINT dead_letters_consumer_stream_seq_event_index_key;
DELETE FROM api_gateway.dead_letters WHERE event_index >= 0;
ALTER TABLE api_gateway.dead_letters ADD CONSTRAINT dead_letters_consumer_stream_seq_key UNIQUE (consumer, stream_seq);
ALTER TABLE api_gateway.dead_letters DROP COLUMN event_id, DROP COLUMN event_index;
