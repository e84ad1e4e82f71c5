-- New search parameters. String search parameters (US Core 6.1: Patient name/family/given, Practitioner name, Organization
-- and Location name) live in search_token: code holds the value normalised for comparison (case and
-- accents ignored), system the value as written (for :exact). FHIR string search matches on the
-- start of a value by default, so the string rows get a pattern index for LIKE 'prefix%', whatever
-- the database's collation; the query names the parameter as a literal, so this partial index applies.
CREATE INDEX search_token_string_idx ON search_token (resource_type, param, code text_pattern_ops)
  WHERE param IN ('name', 'family', 'given', 'address');

-- Resource types whose stored resources have index rows to add: the store re-indexes each once at
-- start-up (after the migrations) and deletes its row. Patient also gains birthdate and gender; US Core
-- token parameters (MedicationRequest intent, DocumentReference and Encounter type, Encounter class,
-- Condition and AllergyIntolerance clinical-status, Goal lifecycle-status, CareTeam role), date parameters
-- (Condition onset-date, abatement-date, recorded-date, MedicationRequest authoredon, ServiceRequest
-- authored, Goal target-date, DocumentReference period),
-- Organization and Location address, PractitionerRole, ServiceRequest and Device are added; the
-- rest of the R4 patient compartment (Claim, ExplanationOfBenefit, ImagingStudy, ...) gains `patient`.
CREATE TABLE search_reindex_pending (resource_type text PRIMARY KEY);
INSERT INTO search_reindex_pending (resource_type) VALUES
  ('Patient'), ('Practitioner'), ('PractitionerRole'), ('Organization'), ('Location'),
  ('MedicationRequest'), ('DocumentReference'), ('Encounter'), ('Condition'), ('AllergyIntolerance'), ('Goal'), ('CareTeam'), ('Device'),
  ('Account'), ('AdverseEvent'), ('BodyStructure'), ('ChargeItem'), ('Claim'), ('ClaimResponse'), ('ClinicalImpression'),
  ('Communication'), ('CommunicationRequest'), ('Composition'), ('CoverageEligibilityRequest'), ('CoverageEligibilityResponse'),
  ('DetectedIssue'), ('DeviceRequest'), ('DeviceUseStatement'), ('DocumentManifest'), ('EpisodeOfCare'), ('ExplanationOfBenefit'),
  ('FamilyMemberHistory'), ('Flag'), ('ImagingStudy'), ('ImmunizationEvaluation'), ('ImmunizationRecommendation'), ('Invoice'),
  ('List'), ('Media'), ('MedicationAdministration'), ('MedicationDispense'), ('MedicationStatement'), ('MolecularSequence'),
  ('NutritionOrder'), ('Provenance'), ('QuestionnaireResponse'), ('RelatedPerson'), ('RiskAssessment'), ('ServiceRequest'),
  ('Specimen'), ('SupplyDelivery'), ('VisionPrescription');
