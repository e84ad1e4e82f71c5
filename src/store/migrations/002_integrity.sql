-- fhir-anchor integrity stage: salted commitments to every stored version, an RFC 9162 Merkle log
-- stored as C2SP tlog-tiles, signed checkpoints and ledger-anchor receipts. See docs/integrity.md.
-- Runs inside one transaction with search_path set to the configured schema.

-- One commitment per stored version: SHA-256(salt ‖ JCS(version as served)). Never updated except
-- to assign its leaf index once. The primary key guarantees a version is committed at most once.
CREATE TABLE commitment (
  resource_type  text        NOT NULL,
  id             text        NOT NULL,
  version_id     bigint      NOT NULL,
  salt           bytea       NOT NULL CHECK (length(salt) = 32),
  commitment     bytea       NOT NULL CHECK (length(commitment) = 32),
  seq            bigserial   NOT NULL,               -- arrival order of pending commitments
  leaf_index     bigint      UNIQUE CHECK (leaf_index >= 0), -- NULL while pending (not yet sequenced)
  created_at     timestamptz NOT NULL,
  sequenced_at   timestamptz,
  PRIMARY KEY (resource_type, id, version_id)
);
CREATE INDEX commitment_pending_idx ON commitment (seq) WHERE leaf_index IS NULL;

-- The log head: exactly one row. Sequencers lock it FOR UPDATE, which serialises appends across
-- every process; leaf indices are therefore dense and unique.
CREATE TABLE log_state (
  singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
  size        bigint      NOT NULL CHECK (size >= 0),
  root        bytea       NOT NULL CHECK (length(root) = 32),
  updated_at  timestamptz NOT NULL
);
-- Root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
INSERT INTO log_state (size, root, updated_at)
VALUES (0, '\xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'::bytea, now());

-- Stored Merkle hashes as C2SP tlog-tiles (height 8): tile (level, idx) holds the hashes of tree
-- level 8·level, entries [idx·256, idx·256 + width). Entries never change; a partial tile only grows.
CREATE TABLE merkle_tile (
  level  integer NOT NULL CHECK (level >= 0),
  idx    bigint  NOT NULL CHECK (idx >= 0),
  width  integer NOT NULL CHECK (width BETWEEN 1 AND 256),
  data   bytea   NOT NULL,
  PRIMARY KEY (level, idx),
  CHECK (length(data) = width * 32)
);

-- Signed checkpoints (C2SP tlog-checkpoint as a C2SP signed note); the built-in log anchor.
CREATE TABLE checkpoint (
  size         bigint      PRIMARY KEY CHECK (size >= 0),
  root         bytea       NOT NULL CHECK (length(root) = 32),
  signed_note  text        NOT NULL,
  created_at   timestamptz NOT NULL
);

-- Receipts from ledger anchors (the built-in log, EVM chains, ...), one per anchor and checkpoint.
CREATE TABLE anchor_receipt (
  anchor      text        NOT NULL,
  size        bigint      NOT NULL,
  receipt     jsonb       NOT NULL,
  created_at  timestamptz NOT NULL,
  PRIMARY KEY (anchor, size)
);
CREATE INDEX anchor_receipt_size_idx ON anchor_receipt (size);

-- Where the tamper audit stopped (resumable sweeps), one row per audit name.
CREATE TABLE integrity_audit_state (
  name        text        PRIMARY KEY,
  cursor      jsonb       NOT NULL,
  updated_at  timestamptz NOT NULL
);
