/**
 * `fhir-anchor worker` has no API, so nothing scraped its metrics (job durations, process metrics) and
 * its container had no health check. With METRICS_PORT it answers GET /metrics and GET /healthz, and
 * nothing else.
 */
import type { Config } from '../../src/config/index.js';
import { startService, type RunningService } from '../../src/runtime.js';
import { cleanupConfig, silentLogger, testConfig } from '../helpers/env.js';

describe('worker metrics endpoint', () => {
  let config: Config | undefined;
  let service: RunningService | undefined;
  afterAll(async () => {
    await service?.close();
    if (config) await cleanupConfig(config);
  });

  it('serves /metrics and /healthz on METRICS_PORT in a worker-only process, nothing else, and closes with it', async () => {
    config = testConfig({ METRICS_PORT: '0' }, 'redis');
    service = await startService({ config, roles: { api: false, workers: true }, logger: silentLogger });
    expect(service.url).toBeUndefined();
    const base = service.metricsUrl!;
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await metrics.text();
    expect(text).toContain('# TYPE fhir_anchor_job_duration_seconds histogram');
    expect(text).toContain('fhir_anchor_process_cpu_seconds_total');
    expect(await (await fetch(`${base}/healthz`)).json()).toEqual({ status: 'ok' });
    expect((await fetch(`${base}/fhir/R4/metadata`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
    await service.close();
    service = undefined;
    await expect(fetch(`${base}/healthz`)).rejects.toThrow();
  });

  it('serves none without METRICS_PORT, and none beside the API (which serves both on PORT)', async () => {
    const c = testConfig({ METRICS_PORT: '0' }, 'redis');
    const s = await startService({ config: c, roles: { api: true, workers: true }, logger: silentLogger });
    try {
      expect(s.metricsUrl).toBeUndefined();
      expect((await fetch(`${s.url}/metrics`)).status).toBe(200);
    } finally {
      await s.close();
      await cleanupConfig(c);
    }
    const c2 = testConfig({}, 'redis');
    const s2 = await startService({ config: c2, roles: { api: false, workers: true }, logger: silentLogger });
    try {
      expect(s2.metricsUrl).toBeUndefined();
    } finally {
      await s2.close();
      await cleanupConfig(c2);
    }
  });
});
