-- Bulk Data $export jobs and their research-consent record (src/research/export, docs/research.md).
-- Ids and references only: no resource bodies, no PHI. Output files live under the export directory
-- (DATA_DIR/exports/{id}/), never in these tables.
-- Runs inside one transaction with search_path set to the configured schema.

CREATE TABLE bulk_export (
  id                uuid        PRIMARY KEY,
  -- The requesting client (issuer + client id): only it may poll, download or cancel.
  issuer            text        NOT NULL,
  client_id         text        NOT NULL,
  level             text        NOT NULL CHECK (level IN ('system', 'patient', 'group')),
  group_id          text,
  group_version     text,
  -- Kick-off URL as received (parameter values are search criteria and policy names, not PHI).
  request_url       text        NOT NULL,
  -- Resolved parameters: types, _since, _typeFilter clauses, de-identification policy, research mode.
  params            jsonb       NOT NULL,
  -- What is needed to resume with the same rights: client id, issuer, scopes, purposes, actor. Never the token.
  access            jsonb       NOT NULL,
  state             text        NOT NULL
                    CHECK (state IN ('accepted', 'in-progress', 'completed', 'failed', 'cancelled', 'expired')),
  -- Resume position and output bookkeeping, saved in the same transaction as each page's consent record.
  cursor            jsonb       NOT NULL DEFAULT '{}'::jsonb,
  exported          bigint      NOT NULL DEFAULT 0,
  manifest          jsonb,
  manifest_ref      text,
  error             text,
  transaction_time  timestamptz NOT NULL,
  created_at        timestamptz NOT NULL,
  updated_at        timestamptz NOT NULL,
  completed_at      timestamptz,
  expires_at        timestamptz
);
CREATE INDEX bulk_export_client_idx ON bulk_export (issuer, client_id, state);
CREATE INDEX bulk_export_expiry_idx ON bulk_export (expires_at) WHERE state IN ('completed', 'failed');

-- The research-consent decision per export and patient: how many of the patient's resources were
-- included or excluded, and the policies (Consent references or default-policy URIs) that decided.
CREATE TABLE bulk_export_patient (
  export_id   uuid    NOT NULL REFERENCES bulk_export (id) ON DELETE CASCADE,
  patient_id  text    NOT NULL,
  included    bigint  NOT NULL DEFAULT 0,
  excluded    bigint  NOT NULL DEFAULT 0,
  policy      text[]  NOT NULL DEFAULT '{}',
  PRIMARY KEY (export_id, patient_id)
);
