-- The durable audit record written on every FHIR request before it is answered: one small row per
-- disclosure or denial (references, codes and ids only; never resource bodies, search values or
-- tokens). The recorder's materialiser turns rows into AuditEvent resources (head, history, search
-- index and integrity commitment) in batches, deleting each row in the transaction that stores its
-- AuditEvent, so every record becomes exactly one AuditEvent. `id` is the AuditEvent's id and
-- `recorded` its AuditEvent.recorded, both fixed when the row is written.
CREATE TABLE audit_outbox (
  seq bigserial PRIMARY KEY,
  id uuid NOT NULL UNIQUE,
  recorded timestamptz NOT NULL,
  record json NOT NULL
);
