-- Compress the large values of the hot tables with LZ4 instead of PostgreSQL's default pglz: resource
-- bodies over about 2 KB (most Synthea resources, every AuditEvent) are compressed twice per version
-- (head and history), and every notification's raw body once. Measured with bench/ingest.ts on the
-- Synthea bundles: PostgreSQL's CPU per stored resource fell from about 0.30 ms to 0.25 ms
-- (docs/decisions.md, "LZ4 for large values"). Only new values are compressed with LZ4; existing ones
-- stay readable as they are (no table rewrite). A server built without LZ4 (it is optional in
-- PostgreSQL's build) keeps pglz.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE resource ALTER COLUMN content SET COMPRESSION lz4;
    ALTER TABLE resource_history ALTER COLUMN content SET COMPRESSION lz4;
    ALTER TABLE resource_history ALTER COLUMN validation SET COMPRESSION lz4;
    ALTER TABLE inbox ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE inbox ALTER COLUMN outcome SET COMPRESSION lz4;
    ALTER TABLE dead_letter ALTER COLUMN outcome SET COMPRESSION lz4;
  END IF;
END
$$;
