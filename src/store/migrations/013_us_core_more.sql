-- More US Core 6.1 search parameters (SHOULD and MAY): Location address-city, address-state and
-- address-postalcode (strings, with a prefix index of their own beside migration 012's), Patient
-- death-date, Condition asserted-date, Encounter location and discharge-disposition, Goal description,
-- CareTeam participant and PractitionerRole endpoint (for their `_include`s), MedicationDispense status,
-- type and medication, QuestionnaireResponse status and authored, RelatedPerson name; and the reference
-- types a US Core server reads: Medication (code), Endpoint, HealthcareService, Questionnaire, ValueSet.
CREATE INDEX search_token_address_part_idx ON search_token (resource_type, param, code text_pattern_ops)
  WHERE param IN ('address-city', 'address-state', 'address-postalcode');

-- Their stored resources are re-indexed once, in the background after start-up (see migration 012).
INSERT INTO search_reindex_pending (resource_type) VALUES
  ('Location'), ('Patient'), ('Condition'), ('Encounter'), ('Goal'), ('CareTeam'), ('PractitionerRole'),
  ('MedicationDispense'), ('QuestionnaireResponse'), ('RelatedPerson'),
  ('Medication'), ('Endpoint'), ('HealthcareService'), ('Questionnaire'), ('ValueSet')
ON CONFLICT DO NOTHING;
