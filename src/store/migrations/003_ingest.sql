-- Ingest: registered sources, their subscriptions' status, dead letters, validation results,
-- identifier lookups, backfill cursors.

CREATE TABLE source (
  id          text        PRIMARY KEY,
  -- The validated source definition, secrets included. Never returned by the API, never logged.
  definition  jsonb       NOT NULL,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);

-- One row per (source, subscription) we hear from: handshakes, heartbeats, event numbers, gaps.
CREATE TABLE source_subscription (
  source_id          text        NOT NULL,
  subscription       text        NOT NULL,   -- the Subscription reference as the source names it
  topic              text,
  status             text,                   -- requested | active | error | off (as last reported)
  last_seen          timestamptz,
  last_heartbeat     timestamptz,
  last_event_number  bigint,
  gaps               jsonb       NOT NULL DEFAULT '[]'::jsonb,   -- [{from, to, detectedAt, catchUp}]
  updated_at         timestamptz NOT NULL,
  PRIMARY KEY (source_id, subscription)
);

CREATE TABLE dead_letter (
  id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  inbox_id      uuid        REFERENCES inbox (id),
  source_id     text        NOT NULL,
  reason        text        NOT NULL,
  entry_index   integer,
  outcome       jsonb       NOT NULL,
  created_at    timestamptz NOT NULL,
  replayed_at   timestamptz,
  replay_count  integer     NOT NULL DEFAULT 0
);
CREATE INDEX dead_letter_open_idx ON dead_letter (created_at) WHERE replayed_at IS NULL;
CREATE INDEX dead_letter_source_idx ON dead_letter (source_id, reason);
-- One open dead letter per inbox item and entry: a retried job never files the same failure twice.
CREATE UNIQUE INDEX dead_letter_once_idx ON dead_letter (inbox_id, COALESCE(entry_index, -1), reason) WHERE replayed_at IS NULL;

-- Validation result of each stored version against base R4 and its target US Core profile.
ALTER TABLE resource_history ADD COLUMN valid boolean;
ALTER TABLE resource_history ADD COLUMN validation jsonb;
ALTER TABLE resource ADD COLUMN valid boolean;

-- Identifier lookups (conditional references, patient linking) on current versions.
CREATE INDEX resource_content_idx ON resource USING gin (content jsonb_path_ops);

-- Resumable backfills: one cursor per (source, resource type).
CREATE TABLE backfill_cursor (
  source_id      text        NOT NULL,
  resource_type  text        NOT NULL,
  next_url       text,
  done           boolean     NOT NULL DEFAULT false,
  count          bigint      NOT NULL DEFAULT 0,
  updated_at     timestamptz NOT NULL,
  PRIMARY KEY (source_id, resource_type)
);
