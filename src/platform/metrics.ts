/**
 * Prometheus metrics (prom-client). One registry per running instance, not the global default, so
 * tests can run several instances in one process. Labels never carry ids or PHI: routes are the
 * matched route patterns, never raw paths.
 */
import { Registry, Histogram, Gauge, Counter, collectDefaultMetrics } from 'prom-client';

export interface Metrics {
  readonly registry: Registry;
  /** HTTP latency in seconds, by method, matched route and status. */
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  /** Jobs waiting/active/delayed/failed per queue; refreshed on every scrape. */
  readonly queueDepth: Gauge<'queue' | 'state'>;
  /** Job processing time in seconds, by queue and outcome. */
  readonly jobDuration: Histogram<'queue' | 'outcome'>;
  /** Health-check failures by component. */
  readonly componentDown: Counter<'component'>;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) {
    collectDefaultMetrics({ register: registry, prefix: 'fhir_anchor_' });
  }
  return {
    registry,
    httpDuration: new Histogram({
      name: 'fhir_anchor_http_request_duration_seconds',
      help: 'HTTP request latency in seconds',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'fhir_anchor_queue_jobs',
      help: 'Jobs in each queue by state (sampled at scrape time)',
      labelNames: ['queue', 'state'],
      registers: [registry],
    }),
    jobDuration: new Histogram({
      name: 'fhir_anchor_job_duration_seconds',
      help: 'Job processing time in seconds',
      labelNames: ['queue', 'outcome'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    componentDown: new Counter({
      name: 'fhir_anchor_health_check_failures_total',
      help: 'Readiness check failures by component',
      labelNames: ['component'],
      registers: [registry],
    }),
  };
}
