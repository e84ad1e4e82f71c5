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
  /**
   * Ingest health per source, read from the database at scrape time (so it is right whichever process
   * did the work): dead letters by reason (open / replayed), event-number gaps and restarts recorded,
   * and seconds since the latest heartbeat. `source` is a source's configured id (a name chosen by the
   * operators, a bounded set), never a resource id.
   */
  readonly deadLetters: Gauge<'source' | 'reason' | 'state'>;
  readonly subscriptionGaps: Gauge<'source'>;
  readonly subscriptionRestarts: Gauge<'source'>;
  readonly heartbeatAge: Gauge<'source'>;
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
    deadLetters: new Gauge({
      name: 'fhir_anchor_dead_letters',
      help: 'Dead letters by source and reason, open or replayed (sampled at scrape time)',
      labelNames: ['source', 'reason', 'state'],
      registers: [registry],
    }),
    subscriptionGaps: new Gauge({
      name: 'fhir_anchor_subscription_gaps',
      help: 'Event-number gaps recorded (caught up or handed on) by source (sampled at scrape time)',
      labelNames: ['source'],
      registers: [registry],
    }),
    subscriptionRestarts: new Gauge({
      name: 'fhir_anchor_subscription_restarts',
      help: 'Restarts of a source event numbering seen in handshakes and heartbeats, by source (sampled at scrape time)',
      labelNames: ['source'],
      registers: [registry],
    }),
    heartbeatAge: new Gauge({
      name: 'fhir_anchor_subscription_heartbeat_age_seconds',
      help: 'Seconds since the latest Subscription heartbeat of a source (sampled at scrape time)',
      labelNames: ['source'],
      registers: [registry],
    }),
  };
}
