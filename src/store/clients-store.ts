/**
 * Registered SMART on FHIR clients (OAuth 2.0, SMART Backend Services with `private_key_jwt`) and
 * the replay cache of client-assertion ids. Validation of registrations lives in
 * `src/fhir-api/smart/clients.ts`; this file only stores them.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/backend-services.html
 * @see docs/decisions-smart.md
 */
import type pg from 'pg';
import type { Clock } from '../platform/clock.js';
import { createPool } from './postgres-store.js';

/** A public JSON Web Key Set, as registered (public keys only; checked by the registration API). */
export interface StoredJwks {
  readonly keys: ReadonlyArray<Readonly<Record<string, unknown>>>;
}

/** One registered client. */
export interface OAuthClientRecord {
  /** OAuth `client_id`. */
  readonly id: string;
  readonly name: string;
  /** Inline public keys; exactly one of `jwks` and `jwksUrl` is set. */
  readonly jwks?: StoredJwks;
  /** URL of the client's JWK Set (fetched and cached by the token endpoint). */
  readonly jwksUrl?: string;
  /** The most this client may be granted (SMART v1/v2 resource scopes). */
  readonly allowedScopes: readonly string[];
  /** HL7 PurposeOfUse codes the client may declare (`purpose_of_use`). */
  readonly allowedPurposes: readonly string[];
  /** Whether the client's users may break the glass (BTG, ETREAT override a consent deny). */
  readonly mayBreakGlass: boolean;
  /** Fixed `fhirUser` reference (Practitioner/…, PractitionerRole/…), if any. */
  readonly fhirUser?: string;
  /** Fixed patient id (patient-context apps), if any. */
  readonly patient?: string;
  /** References naming the requester for consent actor matching (Organization/…, Practitioner/…). */
  readonly actorReferences: readonly string[];
  /** Business identifiers of the requester (NPI, organisation identifiers). */
  readonly actorIdentifiers: ReadonlyArray<{ readonly system: string; readonly value: string }>;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

/** What a registration writes. */
export type OAuthClientInput = Omit<OAuthClientRecord, 'createdAt' | 'updatedAt'>;

/** Registered clients. */
export interface OAuthClientStore {
  /** Creates a client; undefined when the id is taken. */
  create(input: OAuthClientInput): Promise<OAuthClientRecord | undefined>;
  /** Creates or replaces a client. */
  upsert(input: OAuthClientInput): Promise<{ readonly created: boolean; readonly client: OAuthClientRecord }>;
  get(id: string): Promise<OAuthClientRecord | undefined>;
  list(): Promise<OAuthClientRecord[]>;
  delete(id: string): Promise<boolean>;
}

/** Replay protection for client assertions (RFC 7523 §3, SMART Backend Services `jti`). */
export interface AssertionReplayCache {
  /**
   * Records that (clientId, jti) was used, until `expiresAt`. Returns false when the pair was already
   * recorded and has not expired yet (a replay). Safe under concurrency: of two simultaneous uses,
   * exactly one returns true.
   */
  useOnce(clientId: string, jti: string, expiresAt: Date): Promise<boolean>;
}

interface ClientRow {
  id: string;
  name: string;
  jwks: StoredJwks | null;
  jwks_url: string | null;
  allowed_scopes: string[];
  allowed_purposes: string[];
  may_break_glass: boolean;
  fhir_user: string | null;
  patient: string | null;
  actor_references: string[];
  actor_identifiers: Array<{ system: string; value: string }>;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS =
  'id, name, jwks, jwks_url, allowed_scopes, allowed_purposes, may_break_glass, fhir_user, patient, actor_references, actor_identifiers, created_at, updated_at';

function toRecord(row: ClientRow): OAuthClientRecord {
  return {
    id: row.id,
    name: row.name,
    ...(row.jwks ? { jwks: row.jwks } : {}),
    ...(row.jwks_url ? { jwksUrl: row.jwks_url } : {}),
    allowedScopes: row.allowed_scopes,
    allowedPurposes: row.allowed_purposes,
    mayBreakGlass: row.may_break_glass,
    ...(row.fhir_user ? { fhirUser: row.fhir_user } : {}),
    ...(row.patient ? { patient: row.patient } : {}),
    actorReferences: row.actor_references,
    actorIdentifiers: row.actor_identifiers,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function params(input: OAuthClientInput, now: Date): unknown[] {
  return [
    input.id,
    input.name,
    input.jwks ? JSON.stringify(input.jwks) : null,
    input.jwksUrl ?? null,
    [...input.allowedScopes],
    [...input.allowedPurposes],
    input.mayBreakGlass,
    input.fhirUser ?? null,
    input.patient ?? null,
    [...input.actorReferences],
    JSON.stringify(input.actorIdentifiers),
    now,
  ];
}

const INSERT = `INSERT INTO oauth_client (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)`;

/** How often expired assertion ids are pruned (at most), in ms: one cheap indexed delete a minute. */
const PRUNE_INTERVAL_MS = 60_000;

/** PostgreSQL implementation of {@link OAuthClientStore} and {@link AssertionReplayCache}. */
export class PgClientStore implements OAuthClientStore, AssertionReplayCache {
  private lastPrune = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
    private readonly ownsPool = false,
  ) {}

  async create(input: OAuthClientInput): Promise<OAuthClientRecord | undefined> {
    const r = await this.pool.query<ClientRow>(`${INSERT} ON CONFLICT (id) DO NOTHING RETURNING ${COLUMNS}`, params(input, this.clock.now()));
    return r.rows[0] ? toRecord(r.rows[0]) : undefined;
  }

  async upsert(input: OAuthClientInput): Promise<{ created: boolean; client: OAuthClientRecord }> {
    const r = await this.pool.query<ClientRow & { created: boolean }>(
      `${INSERT}
       ON CONFLICT (id) DO UPDATE SET
         name = EXCLUDED.name, jwks = EXCLUDED.jwks, jwks_url = EXCLUDED.jwks_url,
         allowed_scopes = EXCLUDED.allowed_scopes, allowed_purposes = EXCLUDED.allowed_purposes,
         may_break_glass = EXCLUDED.may_break_glass, fhir_user = EXCLUDED.fhir_user, patient = EXCLUDED.patient,
         actor_references = EXCLUDED.actor_references, actor_identifiers = EXCLUDED.actor_identifiers,
         updated_at = EXCLUDED.updated_at
       RETURNING ${COLUMNS}, (xmax = 0) AS created`,
      params(input, this.clock.now()),
    );
    const row = r.rows[0]!;
    return { created: row.created, client: toRecord(row) };
  }

  async get(id: string): Promise<OAuthClientRecord | undefined> {
    const r = await this.pool.query<ClientRow>(`SELECT ${COLUMNS} FROM oauth_client WHERE id = $1`, [id]);
    return r.rows[0] ? toRecord(r.rows[0]) : undefined;
  }

  async list(): Promise<OAuthClientRecord[]> {
    const r = await this.pool.query<ClientRow>(`SELECT ${COLUMNS} FROM oauth_client ORDER BY id`);
    return r.rows.map(toRecord);
  }

  async delete(id: string): Promise<boolean> {
    const r = await this.pool.query(`DELETE FROM oauth_client WHERE id = $1`, [id]);
    return (r.rowCount ?? 0) > 0;
  }

  async useOnce(clientId: string, jti: string, expiresAt: Date): Promise<boolean> {
    const now = this.clock.now();
    if (now.getTime() - this.lastPrune >= PRUNE_INTERVAL_MS) {
      this.lastPrune = now.getTime();
      await this.pool.query(`DELETE FROM oauth_assertion_jti WHERE expires_at < $1`, [now]);
    }
    // A row that has expired may be reused (its assertion can no longer be accepted anyway).
    const r = await this.pool.query(
      `INSERT INTO oauth_assertion_jti (client_id, jti, expires_at) VALUES ($1, $2, $3)
       ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
         WHERE oauth_assertion_jti.expires_at < $4
       RETURNING 1`,
      [clientId, jti, expiresAt, now],
    );
    return (r.rowCount ?? 0) === 1;
  }

  /** Ends the pool when this store opened it ({@link openClientStore}). */
  async close(): Promise<void> {
    if (this.ownsPool) await this.pool.end();
  }
}

/** Options for {@link openClientStore}. */
export interface OpenClientStoreOptions {
  readonly connectionString: string;
  /** The fhir-anchor schema (`openDatabase` applies migration 004_clients). */
  readonly schema: string;
  readonly clock: Clock;
  /** Pool size (default 3: one query per token request or cache miss). */
  readonly max?: number;
  readonly applicationName?: string;
}

/**
 * Opens a {@link PgClientStore} with its own pool on the fhir-anchor schema; `close()` ends the pool.
 *
 * @param options - connection string (from `Database.connectionString`), schema and clock.
 */
export function openClientStore(options: OpenClientStoreOptions): PgClientStore {
  const pool = createPool({
    connectionString: options.connectionString,
    schema: options.schema,
    max: options.max ?? 3,
    applicationName: options.applicationName ?? 'fhir-anchor-smart',
  });
  return new PgClientStore(pool, options.clock, true);
}
