/**
 * SMART client registration: validation of a client definition and the `/admin/clients` router
 * (mounted behind the admin token). Clients authenticate with `private_key_jwt` (SMART
 * client-confidential-asymmetric) against public keys registered here, inline or by JWK Set URL.
 *
 * @see https://hl7.org/fhir/smart-app-launch/STU2/client-confidential-asymmetric.html
 * @see docs/decisions-smart.md
 */
import { Router } from 'express';
import { z } from 'zod';
import { parseScope } from '../../consent/index.js';
import { httpError } from '../../platform/errors.js';
import type { OAuthClientInput, OAuthClientRecord, OAuthClientStore } from '../../store/clients-store.js';

/** HL7 PurposeOfUse codes a client may be allowed (http://terminology.hl7.org/CodeSystem/v3-ActReason). */
export const PURPOSE_CODES = ['TREAT', 'ETREAT', 'HPAYMT', 'HOPERAT', 'HRESCH', 'PUBHLTH', 'BTG'] as const;

const ID_RE = /^[A-Za-z0-9._~-]{1,128}$/;
const FHIR_ID_RE = /^[A-Za-z0-9.-]{1,64}$/;
const REFERENCE_RE = /^[A-Z][A-Za-z]{1,63}\/[A-Za-z0-9.-]{1,64}$/;
const USER_REFERENCE_RE = /^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)\/[A-Za-z0-9.-]{1,64}$/;
/** JWK members that only private or symmetric keys carry. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

const publicJwk = z
  .object({ kty: z.enum(['RSA', 'EC', 'OKP']), kid: z.string().min(1).max(256) })
  .passthrough()
  .refine((k) => PRIVATE_MEMBERS.every((m) => !(m in k)), { message: 'JWK Sets must hold public keys only' });

const jwksUrl = z
  .string()
  .url()
  .refine(
    (u) => {
      let url: URL;
      try {
        url = new URL(u);
      } catch {
        return false;
      }
      // Plain http only on the loopback interface (tests, sidecars); keys must not travel unprotected.
      return url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname));
    },
    { message: 'jwksUrl must be https (http only for localhost)' },
  );

const scope = z.string().refine((s) => parseScope(s).ok, { message: 'not a SMART resource scope (context/Type.permissions)' });

/** A client definition as posted to `/admin/clients`. */
export const ClientRegistrationSchema = z
  .object({
    id: z.string().regex(ID_RE, 'client ids are 1-128 characters of A-Z a-z 0-9 . _ ~ -'),
    name: z.string().min(1).max(200),
    jwks: z.object({ keys: z.array(publicJwk).min(1).max(20) }).optional(),
    jwksUrl: jwksUrl.optional(),
    allowedScopes: z.array(scope).min(1).max(100),
    allowedPurposes: z.array(z.enum(PURPOSE_CODES)).max(PURPOSE_CODES.length).default([]),
    mayBreakGlass: z.boolean().default(false),
    fhirUser: z.string().regex(USER_REFERENCE_RE, 'fhirUser must be Practitioner/id, PractitionerRole/id, Patient/id, RelatedPerson/id or Person/id').optional(),
    patient: z
      .string()
      .transform((p) => (p.startsWith('Patient/') ? p.slice('Patient/'.length) : p))
      .refine((p) => FHIR_ID_RE.test(p), { message: 'patient must be a Patient id' })
      .optional(),
    actor: z
      .object({
        references: z.array(z.string().regex(REFERENCE_RE, 'references are Type/id')).max(50).default([]),
        identifiers: z.array(z.object({ system: z.string().min(1).max(500), value: z.string().min(1).max(500) }).strict()).max(50).default([]),
      })
      .strict()
      .default({ references: [], identifiers: [] }),
  })
  .strict()
  .refine((c) => (c.jwks === undefined) !== (c.jwksUrl === undefined), { message: 'give exactly one of jwks and jwksUrl', path: ['jwks'] });

/** Validates a client definition; throws a 400 OperationOutcome listing every problem. */
export function parseClientRegistration(input: unknown): OAuthClientInput {
  const r = ClientRegistrationSchema.safeParse(input);
  if (!r.success) {
    const problems = r.error.issues.map((i) => `${i.path.join('.') || 'client'}: ${i.message}`);
    throw httpError(400, 'invalid', `Invalid client registration: ${problems.join('; ')}`);
  }
  const c = r.data;
  return {
    id: c.id,
    name: c.name,
    ...(c.jwks ? { jwks: c.jwks } : {}),
    ...(c.jwksUrl ? { jwksUrl: c.jwksUrl } : {}),
    allowedScopes: c.allowedScopes,
    allowedPurposes: c.allowedPurposes,
    mayBreakGlass: c.mayBreakGlass,
    ...(c.fhirUser ? { fhirUser: c.fhirUser } : {}),
    ...(c.patient ? { patient: c.patient } : {}),
    actorReferences: c.actor.references,
    actorIdentifiers: c.actor.identifiers,
  };
}

/** The JSON view of a client (public keys only ever, so nothing to hide). */
export function clientView(c: OAuthClientRecord): Record<string, unknown> {
  return {
    id: c.id,
    name: c.name,
    ...(c.jwks ? { jwks: c.jwks } : {}),
    ...(c.jwksUrl ? { jwksUrl: c.jwksUrl } : {}),
    allowedScopes: c.allowedScopes,
    allowedPurposes: c.allowedPurposes,
    mayBreakGlass: c.mayBreakGlass,
    ...(c.fhirUser ? { fhirUser: c.fhirUser } : {}),
    ...(c.patient ? { patient: c.patient } : {}),
    actor: { references: c.actorReferences, identifiers: c.actorIdentifiers },
    createdAt: c.createdAt.toISOString(),
    updatedAt: c.updatedAt.toISOString(),
  };
}

function bodyObject(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw httpError(400, 'invalid', 'Expected a JSON object body (Content-Type: application/json)');
  }
  return body as Record<string, unknown>;
}

/**
 * The client registration router: `GET/POST /clients`, `GET/PUT/DELETE /clients/:id`. Mount it under
 * `/admin` (behind the admin token, after the JSON body parser). Errors are OperationOutcomes.
 */
export function createClientsAdminRouter(deps: { readonly clients: OAuthClientStore }): Router {
  const { clients } = deps;
  const router = Router();

  router.get('/clients', async (_req, res) => {
    res.json((await clients.list()).map(clientView));
  });

  router.post('/clients', async (req, res) => {
    const input = parseClientRegistration(bodyObject(req.body));
    const created = await clients.create(input);
    if (!created) throw httpError(409, 'duplicate', `Client ${input.id} already exists; use PUT /admin/clients/${input.id} to replace it`);
    res.status(201).location(`/admin/clients/${created.id}`).json(clientView(created));
  });

  router.get('/clients/:id', async (req, res) => {
    const client = await clients.get(String(req.params.id));
    if (!client) throw httpError(404, 'not-found', 'Unknown client');
    res.json(clientView(client));
  });

  router.put('/clients/:id', async (req, res) => {
    const body = bodyObject(req.body);
    const id = String(req.params.id);
    if (body.id !== undefined && body.id !== id) throw httpError(400, 'invalid', 'The id in the body does not match the URL');
    const { created, client } = await clients.upsert(parseClientRegistration({ ...body, id }));
    res.status(created ? 201 : 200).json(clientView(client));
  });

  router.delete('/clients/:id', async (req, res) => {
    if (!(await clients.delete(String(req.params.id)))) throw httpError(404, 'not-found', 'Unknown client');
    res.status(204).end();
  });

  return router;
}
