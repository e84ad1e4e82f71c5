-- Identifier look-ups (conditional references, conditional creates, patient linking) only need the
-- identifiers, not the whole body: a GIN index over every key of every resource cost about 30% of
-- each write (measured in bench/ingest.ts). Index just Resource.identifier instead.
DROP INDEX IF EXISTS resource_content_idx;
CREATE INDEX resource_identifier_idx ON resource USING gin ((content -> 'identifier') jsonb_path_ops);
