-- fhir-anchor initial schema: versioned FHIR resources and the durable ingest inbox.
-- Runs inside one transaction with search_path set to the configured schema.

-- Current version of every resource (one row per resource; also the lock that serialises writers).
CREATE TABLE resource (
  resource_type  text        NOT NULL,
  id             text        NOT NULL,
  version_id     bigint,                 -- current version; NULL only while the first write is in flight
  last_version   bigint      NOT NULL,   -- highest version number assigned (versions are dense per resource)
  last_updated   timestamptz,
  source_time    timestamptz,            -- the source's lastUpdated of the current version (ordering key)
  deleted        boolean     NOT NULL DEFAULT false,
  content        jsonb,                  -- the current version exactly as served; NULL when deleted
  PRIMARY KEY (resource_type, id)
);
CREATE INDEX resource_last_updated_idx ON resource (resource_type, last_updated);

-- Every version ever stored. Never updated or deleted by the application.
CREATE TABLE resource_history (
  resource_type  text        NOT NULL,
  id             text        NOT NULL,
  version_id     bigint      NOT NULL,
  last_updated   timestamptz NOT NULL,
  source_time    timestamptz,
  deleted        boolean     NOT NULL DEFAULT false,
  dedup_key      text,                   -- source versionId or content hash: the same key is stored once
  source_id      text,
  content        jsonb,                  -- NULL for a delete marker
  PRIMARY KEY (resource_type, id, version_id)
);
CREATE UNIQUE INDEX resource_history_dedup_idx ON resource_history (resource_type, id, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX resource_history_last_updated_idx ON resource_history (last_updated);

-- Raw notifications, written in one transaction before the hook answers 2xx. PostgreSQL is the source
-- of truth: anything a queue loses is replayed from here.
CREATE TABLE inbox (
  id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  source_id     text        NOT NULL,
  kind          text        NOT NULL,
  content_type  text,
  body          bytea       NOT NULL,
  body_sha256   bytea       NOT NULL,
  dedup_key     text,
  meta          jsonb       NOT NULL DEFAULT '{}'::jsonb,
  received_at   timestamptz NOT NULL,
  stage         text        NOT NULL DEFAULT 'received',
  state         text        NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'processing', 'done', 'failed', 'dead')),
  outcome       jsonb,
  attempts      integer     NOT NULL DEFAULT 0,
  updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX inbox_dedup_idx ON inbox (source_id, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX inbox_unfinished_idx ON inbox (received_at) WHERE state IN ('pending', 'processing', 'failed');
CREATE INDEX inbox_state_idx ON inbox (stage, state);
