-- Search index for the consent-gated FHIR API (see docs/decisions-fhir-api.md).
-- Filled at write time, in the transaction that stores a version, for the CURRENT version of each
-- resource only (history is read by id, never searched). A delete removes the resource's rows.
-- Runs inside one transaction with search_path set to the configured schema.

-- Token parameters (code, category, status, identifier, ...): system '' when the coding has none.
CREATE TABLE search_token (
  resource_type  text NOT NULL,
  id             text NOT NULL,
  param          text NOT NULL,
  system         text NOT NULL,
  code           text NOT NULL
);
CREATE INDEX search_token_lookup_idx ON search_token (resource_type, param, code, system, id);
CREATE INDEX search_token_resource_idx ON search_token (resource_type, id);

-- Reference parameters (patient, subject, encounter, ...), as local Type/id. The lookup index leads
-- with the target so `patient=`, `_revinclude` and the patient compartment ($everything, consent
-- look-up) are index scans.
CREATE TABLE search_reference (
  resource_type  text NOT NULL,
  id             text NOT NULL,
  param          text NOT NULL,
  target_type    text NOT NULL,
  target_id      text NOT NULL
);
CREATE INDEX search_reference_lookup_idx ON search_reference (target_type, target_id, param, resource_type, id);
CREATE INDEX search_reference_resource_idx ON search_reference (resource_type, id);

-- Date parameters as half-open instants [lo, hi): a partial date covers its whole precision.
CREATE TABLE search_date (
  resource_type  text        NOT NULL,
  id             text        NOT NULL,
  param          text        NOT NULL,
  lo             timestamptz NOT NULL,
  hi             timestamptz NOT NULL
);
CREATE INDEX search_date_lookup_idx ON search_date (resource_type, param, lo, hi);
CREATE INDEX search_date_resource_idx ON search_date (resource_type, id);

-- Keyset paging of a type in id order (bytewise, so cursors compare the same everywhere) over
-- current, non-deleted resources.
CREATE INDEX resource_live_idx ON resource (resource_type, id COLLATE "C") WHERE version_id IS NOT NULL AND NOT deleted;
