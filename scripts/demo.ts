/**
 * `npm run demo`: the whole of fhir-anchor on one machine, in embedded mode, narrated step by step.
 *
 * Starts: fhir-anchor (embedded PostgreSQL under a temporary DATA_DIR, BullMQ on PostgreSQL), a local
 * EVM chain (Hardhat) with the anchor contract, and a small source EHR. Then: registers the EHR as a
 * source, streams the sample patients through Subscriptions, grants and revokes a consent as the
 * patient, reads as a clinician's app, exports de-identified data as a researcher, verifies a record with the offline verifier, tampers with a row and shows the
 * audit catch it. Everything it starts, it stops; the temporary directory is removed.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadConfig } from '../src/config/index.js';
import { deployAnchorContract, verifyEvmReceipt } from '../src/integrity/anchors/evm.js';
import { verifyOffline } from '../src/integrity/verifier.js';
import { freePort } from '../src/store/embedded-postgres.js';
import { anchorId } from '../src/normalize/index.js';
import { createLogger } from '../src/platform/logger.js';
import { startService } from '../src/runtime.js';
import { buildNotificationBundle, startFakeEhr } from '../test/helpers/fake-ehr.js';
import { HARDHAT_KEYS, startHardhatNode } from '../test/helpers/hardhat.js';
import { registerTestClient } from '../test/helpers/smart-client.js';

const say = (text: string): void => {
  process.stdout.write(`${text}\n`);
};
const step = (n: number, text: string): void => say(`\n${n}. ${text}`);
/**
 * The shared public data set (Synthea bundles): `SHARED_DATA_DIR`, else `../shared/data` beside the
 * working directory or beside this checkout, else `/work/shared/data`.
 */
const SHARED_CANDIDATES = [
  process.env.SHARED_DATA_DIR,
  path.resolve(process.cwd(), '../shared/data'),
  path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../shared/data'),
  '/work/shared/data',
].filter((d): d is string => d !== undefined && d !== '');
const SHARED = SHARED_CANDIDATES.find((d) => existsSync(path.join(d, 'synthea/uscore-2021-run1'))) ?? SHARED_CANDIDATES[0]!;

async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse((await readFile(file, 'utf8')).replace(/^\uFEFF/, '')) as Record<string, unknown>;
}

async function main(): Promise<void> {
  if (!existsSync(path.join(SHARED, 'synthea/uscore-2021-run1'))) {
    say(`The demo streams Synthea patients from the shared data set, which is not here. Looked in: ${SHARED_CANDIDATES.join(', ')}.`);
    say('Set SHARED_DATA_DIR to the directory that holds synthea/uscore-2021-run1.');
    process.exit(2);
  }
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fhir-anchor-demo-'));
  await chmod(dataDir, 0o711); // the embedded PostgreSQL runs as the postgres user when we are root
  say('fhir-anchor demo — everything runs on this machine; nothing leaves it.');

  step(1, 'Starting a local EVM chain (Hardhat) and deploying the anchor contract…');
  const chain = await startHardhatNode();
  const contract = await deployAnchorContract({ rpcUrl: chain.url, privateKey: HARDHAT_KEYS[0], pollingIntervalMs: 50 });
  say(`   chain ${contract.chainId} at ${chain.url}, contract ${contract.address}`);

  step(2, 'Starting fhir-anchor in embedded mode (its own PostgreSQL, queues on PostgreSQL)…');
  const port = await freePort();
  const config = loadConfig({
    DATA_DIR: dataDir,
    PORT: String(port),
    LOG_LEVEL: 'silent',
    CONSENT_DEFAULT_DECISION: 'deny',
    RESEARCH_CONSENT_DEFAULT: 'permit',
    LOG_BATCH_INTERVAL_MS: '300',
    EVM_RPC_URL: chain.url,
    EVM_PRIVATE_KEY: HARDHAT_KEYS[0],
    EVM_CONTRACT_ADDRESS: contract.address,
    DEID_CRYPTO_HASH_KEY: 'demo-crypto-hash-key-change-me',
    DEID_DATE_SHIFT_KEY: 'demo-date-shift-key',
  });
  const service = await startService({ config, roles: { api: true, workers: true }, logger: createLogger('silent') });
  const base = service.url!;
  const admin = { authorization: `Bearer ${service.adminToken}`, 'content-type': 'application/json' };
  say(`   listening on ${base} (admin token in ${dataDir}/admin-token)`);

  const ehr = await startFakeEhr({ capability: 'backport' });
  const cleanup = async (): Promise<void> => {
    await ehr.close().catch(() => undefined);
    await service.close().catch(() => undefined);
    await chain.stop().catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  };

  try {
    step(3, 'Registering the hospital EHR as a source…');
    const hookToken = 'demo-hook-token-0123456789';
    let res = await fetch(`${base}/admin/sources`, {
      method: 'POST',
      headers: admin,
      body: JSON.stringify({ id: 'general-hospital', name: 'General Hospital EHR', baseUrl: ehr.baseUrl, hookAuth: { bearerToken: hookToken } }),
    });
    say(`   POST /admin/sources → ${res.status}; its Subscriptions will notify ${base}/hooks/general-hospital`);

    step(4, 'Streaming sample patients in through Subscription notifications…');
    const synthea = path.join(SHARED, 'synthea/uscore-2021-run1');
    const files = [
      'support/hospitalInformation1633536936158.subset.json',
      'support/practitionerInformation1633536936158.subset.json',
      'patients/Jani266_Reynolds644_304f9946-5db8-dc6f-e060-48b9fea3ca5d.json',
      'patients/Bob965_Keeling57_3f6fd0bb-6cd3-eb3f-4401-cd38ace25f2b.json',
    ];
    const hook = (body: unknown) =>
      fetch(`${base}/hooks/general-hospital`, { method: 'POST', headers: { authorization: `Bearer ${hookToken}`, 'content-type': 'application/fhir+json' }, body: JSON.stringify(body) });
    const settle = async (inboxId: string): Promise<Record<string, unknown>> => {
      for (;;) {
        const item = await service.database.store.inbox.get(inboxId);
        if (item?.state === 'done' || item?.state === 'dead') return item.outcome as Record<string, unknown>;
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    let patientSourceId = '';
    for (const f of files) {
      const bundle = await readJson(path.join(synthea, f));
      res = await hook(bundle);
      const outcome = await settle(res.headers.get('x-inbox-id')!);
      const patient = ((bundle.entry as Array<{ resource: { resourceType: string; id: string } }>) ?? []).find((e) => e.resource.resourceType === 'Patient');
      if (patient && !patientSourceId) patientSourceId = patient.resource.id;
      say(`   ${path.basename(f)}: ${res.status}, stored ${String(outcome.stored)} versions (${String(outcome.invalid)} flagged as not conforming to US Core)`);
    }
    const encounter = ehr.seed({ resourceType: 'Encounter', id: 'demo-visit', status: 'in-progress', class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' }, subject: { reference: `Patient/${patientSourceId}` } });
    const n = ehr.recordEvent('admissions', encounter);
    ehr.seed({ resourceType: 'Subscription', id: 'admissions', status: 'active', reason: 'demo', criteria: 'http://example.org/topics/admission', channel: { type: 'rest-hook', endpoint: `${base}/hooks/general-hospital`, payload: 'application/fhir+json' } });
    res = await hook(buildNotificationBundle({ subscriptionUrl: `${ehr.baseUrl}/Subscription/admissions`, topic: 'http://example.org/topics/admission', type: 'event-notification', eventsSinceSubscriptionStart: n, content: 'id-only', baseUrl: ehr.baseUrl, events: [{ eventNumber: n, timestamp: new Date().toISOString(), focus: encounter }] }));
    const idOnly = await settle(res.headers.get('x-inbox-id')!);
    say(`   an id-only Backport notification for a new visit: fetched ${String(idOnly.fetched)} resource back from the EHR and stored it`);

    const patientId = anchorId('general-hospital', 'Patient', patientSourceId);
    step(5, "A clinician's app reads the patient's data — before any consent (opt-in jurisdiction: default deny)…");
    const clinician = await registerTestClient(base, service.adminToken, { id: 'clinic-app', allowedScopes: ['user/*.rs'], allowedPurposes: ['TREAT', 'ETREAT'], mayBreakGlass: true, fhirUser: 'Practitioner/dr-demo' });
    const clinicianToken = await clinician.token('user/*.rs', { purposeOfUse: 'TREAT' });
    const readObs = async (token: string) =>
      (await (await fetch(`${base}/fhir/R4/Observation?patient=${patientId}&_count=5`, { headers: { authorization: `Bearer ${token}` } })).json()) as { entry?: unknown[] };
    say(`   GET /fhir/R4/Observation?patient=… → ${(await readObs(clinicianToken)).entry?.length ?? 0} results (denied items are invisible, not hidden)`);

    step(6, 'The patient grants a consent to that app, through their own patient-context app…');
    const patientApp = await registerTestClient(base, service.adminToken, { id: 'patient-app', allowedScopes: ['patient/Consent.cruds', 'patient/AuditEvent.rs'], patient: patientId, fhirUser: `Patient/${patientId}` });
    const patientToken = await patientApp.token('patient/Consent.cruds patient/AuditEvent.rs');
    const consent = {
      resourceType: 'Consent',
      status: 'active',
      scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
      category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0' }] }],
      patient: { reference: `Patient/${patientId}` },
      policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'OPTIN' }] },
      provision: {
        type: 'permit',
        actor: [{ role: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType', code: 'IRCP' }] }, reference: { identifier: { system: 'urn:ietf:params:oauth:client-id', value: 'clinic-app' } } }],
        purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }],
      },
    };
    res = await fetch(`${base}/fhir/R4/Consent`, { method: 'POST', headers: { authorization: `Bearer ${patientToken}`, 'content-type': 'application/fhir+json' }, body: JSON.stringify(consent) });
    const created = (await res.json()) as { id?: string };
    say(`   POST /fhir/R4/Consent → ${res.status} (stored as a version and committed to the integrity log)`);
    say(`   the clinician's app now sees ${(await readObs(clinicianToken)).entry?.length ?? 0} Observations`);

    step(7, 'The patient revokes the consent…');
    res = await fetch(`${base}/fhir/R4/Consent/${created.id}`, { method: 'DELETE', headers: { authorization: `Bearer ${patientToken}` } });
    say(`   DELETE /fhir/R4/Consent/${created.id} → ${res.status}; the clinician's app now sees ${(await readObs(clinicianToken)).entry?.length ?? 0}`);
    const bg = await clinician.token('user/*.rs', { purposeOfUse: 'ETREAT' });
    say(`   in an emergency (purpose ETREAT, break-glass allowed for this app) it sees ${(await readObs(bg)).entry?.length ?? 0} — always audited and flagged to the patient`);
    const audits = (await (await fetch(`${base}/fhir/R4/AuditEvent?patient=${patientId}`, { headers: { authorization: `Bearer ${patientToken}` } })).json()) as { entry?: unknown[] };
    say(`   the patient reads who saw their data and why: ${audits.entry?.length ?? 0} AuditEvents`);

    step(8, 'A researcher de-identifies data (HIPAA Safe Harbor)…');
    const researcher = await registerTestClient(base, service.adminToken, { id: 'research-app', allowedScopes: ['system/*.rs'], allowedPurposes: ['HRESCH'] });
    const researchToken = await researcher.token('system/*.rs', { purposeOfUse: 'HRESCH' });
    const sample = await readJson(path.join(synthea, files[2]!));
    const patientResource = (sample.entry as Array<{ resource: Record<string, unknown> }>).find((e) => e.resource.resourceType === 'Patient')!.resource;
    res = await fetch(`${base}/research/$deidentify`, { method: 'POST', headers: { authorization: `Bearer ${researchToken}`, 'content-type': 'application/fhir+json' }, body: JSON.stringify(patientResource) });
    const deid = (await res.json()) as Record<string, unknown>;
    say(`   POST /research/$deidentify → ${res.status}: name ${JSON.stringify(deid.name ?? 'removed')}, birthDate ${String(deid.birthDate)}, address ${JSON.stringify(deid.address ?? 'removed').slice(0, 60)}, identifiers ${JSON.stringify(deid.identifier ?? 'removed')}`);

    say('   …and runs a Bulk Data $export, de-identified, over patients whose consent permits research:');
    res = await fetch(`${base}/fhir/R4/Patient/$export?_type=Patient,Observation&_deidentify=safe-harbor`, {
      headers: { authorization: `Bearer ${researchToken}`, prefer: 'respond-async' },
    });
    const statusUrl = res.headers.get('content-location');
    say(`   GET /fhir/R4/Patient/$export → ${res.status}, status at ${statusUrl ?? '(none)'}`);
    if (statusUrl) {
      const local = new URL(statusUrl);
      for (let i = 0; i < 150; i++) {
        const st = await fetch(`${base}${local.pathname}${local.search}`, { headers: { authorization: `Bearer ${researchToken}` } });
        if (st.status === 200) {
          const manifest = (await st.json()) as { output?: Array<{ type: string; count?: number }> };
          say(`   manifest: ${JSON.stringify((manifest.output ?? []).map((o) => `${o.type}: ${o.count ?? '?'}`))} (file hashes committed to the integrity log)`);
          break;
        }
        if (st.status !== 202) {
          say(`   status ${st.status}: ${(await st.text()).slice(0, 200)}`);
          break;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    }

    step(9, 'Proving a lab result with the offline verifier…');
    const obsList = (await readObs(bg)).entry as Array<{ resource: { id: string } }> | undefined;
    const obsId = obsList?.[0]?.resource.id;
    if (obsId) {
      let verify: { parameter: Array<Record<string, unknown>> } | undefined;
      for (let i = 0; i < 100 && !verify; i++) {
        const v = await fetch(`${base}/fhir/R4/Observation/${obsId}/$verify`, { headers: { authorization: `Bearer ${bg}` } });
        if (v.status === 200) verify = (await v.json()) as typeof verify;
        else await new Promise((r) => setTimeout(r, 300));
      }
      const p = (name: string) => verify!.parameter.find((x) => x.name === name);
      const version = await (await fetch(`${base}/fhir/R4/Observation/${obsId}`, { headers: { authorization: `Bearer ${bg}` } })).json();
      const vkey = (await (await fetch(`${base}/ledger/key`)).text()).trim();
      const anchors = verify!.parameter.filter((x) => x.name === 'anchorReceipt').map((x) => JSON.parse(String(x.valueString)) as never);
      const result = await verifyOffline({ resourceJson: JSON.stringify(version), saltB64: String(p('salt')?.valueBase64Binary), receiptText: String(p('receipt')?.valueString), vkey, anchorReceipts: anchors, rpcUrl: chain.url, anchorVerifiers: { evm: verifyEvmReceipt } });
      for (const c of result.checks) say(`   ${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`);
      say(`   → ${result.ok ? 'this exact record existed, unchanged, no later than its anchor time' : 'verification failed'}`);

      step(10, 'Someone edits that row directly in the database; the audit catches it…');
      const secret = JSON.parse(await readFile(path.join(dataDir, 'embedded-postgres.secret'), 'utf8')) as { user: string; password: string };
      const port = new URL(service.database.connectionString).port;
      const client = new pg.Client({ connectionString: `postgres://${secret.user}:${encodeURIComponent(secret.password)}@127.0.0.1:${port}/postgres` });
      await client.connect();
      await client.query(`UPDATE fhir_anchor.resource_history SET content = jsonb_set(content, '{status}', '"amended"') WHERE resource_type = 'Observation' AND id = $1`, [obsId]);
      await client.end();
      const audit = await service.integrity.runAudit();
      for (const f of audit.findings) say(`   ALERT ${f.kind}: ${f.resourceType ?? ''}/${f.id ?? ''}/_history/${f.versionId ?? ''} — ${f.detail}`);
      say(`   (${audit.versionsChecked} versions and ${audit.checkpointsChecked} checkpoints checked)`);
      const ready = await fetch(`${base}/readyz`);
      say(`   GET /readyz → ${ready.status} (integrity-audit degraded; an alert metric and log line name the version)`);
    }
    say('\nDone. Stopping everything.');
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
