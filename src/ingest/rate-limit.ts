/**
 * Per-source token bucket: how fast fhir-anchor lets itself call one EHR. Every HTTP request to a
 * source (including retries and paging) takes one token first.
 *
 * The bucket hands out *reservations*: `take()` debits a token immediately (the balance may go
 * negative) and waits until the debt is repaid at `ratePerSecond`. Concurrent callers therefore
 * queue in FIFO order with no thundering herd, the same model as Go's `rate.Limiter.Reserve`.
 */
import type { Clock } from '../platform/clock.js';
import { systemClock } from '../platform/clock.js';
import type { Source } from './source.js';

/** Waits `ms` milliseconds (or until `signal` aborts, rejecting with its reason). Injectable for tests. */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

/** The real timer-based {@link Sleep}. */
export const realSleep: Sleep = (ms, signal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

export interface TokenBucketOptions {
  /** Sustained rate, tokens (requests) per second; > 0. */
  ratePerSecond: number;
  /** Bucket capacity, tokens: how many requests may go out back to back after idling. Default `max(1, ceil(ratePerSecond))`, i.e. one second's worth. */
  burst?: number;
  /** Time source; default the system clock. */
  clock?: Clock;
  /** Timer; default {@link realSleep}. Tests pass one that advances a `ManualClock`. */
  sleep?: Sleep;
}

/** A token bucket with an async, FIFO, abortable {@link TokenBucket.take}. */
export class TokenBucket {
  /** Tokens per millisecond. */
  private readonly ratePerMs: number;
  readonly burst: number;
  private readonly clock: Clock;
  private readonly sleep: Sleep;
  /** Current balance in tokens; negative while callers hold reservations they are waiting out. */
  private tokens: number;
  private updatedAt: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.ratePerSecond > 0) || !Number.isFinite(options.ratePerSecond)) {
      throw new RangeError('ratePerSecond must be a positive finite number');
    }
    const burst = options.burst ?? Math.max(1, Math.ceil(options.ratePerSecond));
    if (!(burst >= 1) || !Number.isFinite(burst)) throw new RangeError('burst must be >= 1');
    this.ratePerMs = options.ratePerSecond / 1000;
    this.burst = burst;
    this.clock = options.clock ?? systemClock;
    this.sleep = options.sleep ?? realSleep;
    this.tokens = burst;
    this.updatedAt = this.clock.now().getTime();
  }

  private refill(): void {
    const now = this.clock.now().getTime();
    const elapsed = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(this.burst, this.tokens + elapsed * this.ratePerMs);
    this.updatedAt = now;
  }

  /** Tokens available right now (may be negative while reservations are outstanding). */
  available(): number {
    this.refill();
    return this.tokens;
  }

  /** Takes a token if one is available now, without waiting. */
  tryTake(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /**
   * Takes one token, waiting as long as needed (ms = deficit / rate). If `signal` aborts while
   * waiting, the reservation is returned to the bucket and the promise rejects with the reason.
   */
  async take(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.refill();
    this.tokens -= 1;
    if (this.tokens >= 0) return;
    const waitMs = Math.ceil(-this.tokens / this.ratePerMs);
    try {
      await this.sleep(waitMs, signal);
    } catch (err) {
      this.tokens += 1;
      throw err;
    }
  }
}

/**
 * The bucket for one source: `source.rateLimitPerSecond` requests per second, burst one second's
 * worth unless `burst` is given. Share one bucket between all clients of the same source.
 */
export function createSourceRateLimiter(
  source: Pick<Source, 'rateLimitPerSecond'>,
  options: Omit<TokenBucketOptions, 'ratePerSecond'> = {},
): TokenBucket {
  return new TokenBucket({ ...options, ratePerSecond: source.rateLimitPerSecond });
}
