-- SMART on FHIR: registered OAuth clients (Backend Services, private_key_jwt) and the replay cache of
-- client-assertion ids (jti). See docs/decisions-smart.md.

CREATE TABLE oauth_client (
  id                 text        PRIMARY KEY,               -- client_id
  name               text        NOT NULL,
  jwks               jsonb,                                 -- inline public JWK Set (exactly one of jwks / jwks_url)
  jwks_url           text,
  allowed_scopes     text[]      NOT NULL,                  -- the most this client may be granted
  allowed_purposes   text[]      NOT NULL DEFAULT '{}',     -- HL7 PurposeOfUse codes it may declare
  may_break_glass    boolean     NOT NULL DEFAULT false,
  fhir_user          text,                                  -- fixed fhirUser reference, if any
  patient            text,                                  -- fixed patient id (patient-context apps), if any
  actor_references   text[]      NOT NULL DEFAULT '{}',     -- Organization/…, Practitioner/… (consent actor matching)
  actor_identifiers  jsonb       NOT NULL DEFAULT '[]'::jsonb, -- [{system, value}] (NPI, organisation ids)
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL,
  CONSTRAINT oauth_client_one_key_source CHECK ((jwks IS NULL) <> (jwks_url IS NULL))
);

-- Client-assertion ids seen, kept until the assertion expires: a second use of (client, jti) is a replay.
CREATE TABLE oauth_assertion_jti (
  client_id   text        NOT NULL,
  jti         text        NOT NULL,
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (client_id, jti)
);
CREATE INDEX oauth_assertion_jti_expires_idx ON oauth_assertion_jti (expires_at);
