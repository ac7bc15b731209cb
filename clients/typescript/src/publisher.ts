// Non-blocking event publisher: emit() appends to a bounded buffer; a flusher batches to Redis.
//
// The same semantics as shared/events/publisher.py (the reference publisher): emit() does no I/O and
// never throws; a background flusher assigns sequence numbers when it encodes a batch (so a dropped
// event never takes one), writes up to 64 entries per round trip, never an entry larger than
// MAX_ENTRY_BYTES (a larger batch is split; an event too large on its own is dropped), retries a batch
// with the same bytes until Redis answers, counts what it had to drop (the bounded buffer full, an
// event too large or unencodable) and reports it as `events.dropped` once Redis is reachable, sends
// `source.heartbeat` (and registered snapshots) every heartbeat interval, and close() publishes
// `source.stopped` and flushes within a deadline.
import { hostname } from "node:os";
import { createClient } from "@redis/client";
import { type Entries, encodeBatch, encodeEntries, ENTRY_FIELD, type WireEvent } from "./codec.js";
import { type EventFields, type EventType, LIMITS } from "./events.generated.js";
import { DEFAULT_PREFIX, makeSrc, partitionOf, streamKey } from "./streams.js";

/** Where the publisher reports trouble; it never throws at the caller. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

export interface PublisherOptions {
  /** Where the event bus is (`redis://`, `rediss://`); default `redis://127.0.0.1:6379/0`. */
  redisUrl?: string;
  /** Service name: part of the source id and of `source.started`; an identifier. Default `app`. */
  service?: string;
  /** Software version reported in `source.started` (`boilerhouse_info`). Default `0`. */
  version?: string;
  /** Number of partition streams; this source writes to one, chosen by CRC-32 of its id. Default 1. */
  partitions?: number;
  /** Key prefix of the streams. Default `boilerhouse`. */
  prefix?: string;
  /** Events held in memory (queued plus encoded, not yet written) before emit() drops. Default 100000. */
  bufferSize?: number;
  /** Events per stream entry, at most LIMITS.MAX_EVENTS_PER_BATCH (10000; a larger value is lowered to it). Default 500. */
  batchSize?: number;
  /** How often the flusher drains the buffer, in ms. Default 50. */
  flushIntervalMs?: number;
  /** How often `source.heartbeat` and the registered snapshots are sent, in ms. Default 5000. */
  heartbeatIntervalMs?: number;
  /** Approximate cap on the stream length (`XADD ... MAXLEN ~`). Default 1000000. */
  streamMaxlen?: number;
  /** A Redis command (or connecting) that takes longer than this fails and is retried, in ms. Default 2000. */
  commandTimeoutMs?: number;
  /** The source id; by default `service:host:pid:nonce`, new per Publisher. */
  src?: string;
  /** Default: warnings to console.warn, nothing for info. */
  logger?: Logger;
}

/** The fields argument of emit(): optional for types without fields. */
export type FieldsArg<T extends EventType> = Record<string, never> extends EventFields[T]
  ? [fields?: EventFields[T]]
  : [fields: EventFields[T]];

type Queued = [type: string, ts: number, fields: Readonly<Record<string, unknown>> | null];
/** An encoded batch waiting for its XADD: (number of events, payload). */
type Pending = [events: number, payload: Buffer];

function newClient(url: string, timeoutMs: number) {
  return createClient({
    url,
    socket: { connectTimeout: timeoutMs, reconnectStrategy: false },
    disableOfflineQueue: true,
    disableClientInfo: true,
  });
}
type Client = ReturnType<typeof newClient>;

const DEFAULT_LOGGER: Logger = {
  info: () => {},
  warn: (message) => console.warn(`boilerhouse events: ${message}`),
};

/** Wall-clock time in unix seconds: the `ts` of an event. */
const wallSeconds = (): number => Date.now() / 1000;

/** A monotonic stopwatch for `duration_s`: `const elapsed = stopwatch(); ...; elapsed()` gives seconds. */
export function stopwatch(): () => number {
  const start = performance.now();
  return () => (performance.now() - start) / 1000;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Publishes the events of one producer process life (one source). */
export class Publisher {
  readonly service: string;
  readonly src: string;
  readonly partition: number;
  readonly stream: string;
  /** Events written to Redis so far. */
  sentEvents = 0;
  /** Stream entries written so far. */
  sentEntries = 0;

  readonly #redisUrl: string;
  readonly #cap: number;
  readonly #batchSize: number;
  readonly #intervalMs: number;
  readonly #heartbeatMs: number;
  readonly #maxlen: string;
  readonly #timeoutMs: number;
  readonly #logger: Logger;

  #buf: Queued[] = [];
  #pending: Pending[] = [];
  #pendingEvents = 0;
  #seq = 0;
  #dropped = 0;
  #droppedReported = 0;
  #snapshots: (() => void)[] = [];
  #client: Client | null = null;
  #connected = false;
  #backoffS = 0;
  #retryAt = 0;
  #nextHeartbeat: number;
  #timer: NodeJS.Timeout | null = null;
  #round: Promise<void> | null = null;
  #wakeAgain = false;
  #stopped = false;

  constructor(options: PublisherOptions = {}) {
    this.service = options.service ?? "app";
    this.src = options.src ?? makeSrc(this.service);
    this.partition = partitionOf(this.src, options.partitions ?? 1);
    this.stream = streamKey(this.partition, options.prefix ?? DEFAULT_PREFIX);
    this.#redisUrl = options.redisUrl ?? "redis://127.0.0.1:6379/0";
    this.#cap = options.bufferSize ?? 100_000;
    // At most MAX_EVENTS_PER_BATCH: the aggregator dead-letters an entry of more events as too_large.
    this.#batchSize = Math.min(LIMITS.MAX_EVENTS_PER_BATCH, Math.max(1, options.batchSize ?? 500));
    this.#intervalMs = options.flushIntervalMs ?? 50;
    this.#heartbeatMs = options.heartbeatIntervalMs ?? 5000;
    this.#maxlen = String(options.streamMaxlen ?? 1_000_000);
    this.#timeoutMs = options.commandTimeoutMs ?? 2000;
    this.#logger = options.logger ?? DEFAULT_LOGGER;
    this.#nextHeartbeat = performance.now() + this.#heartbeatMs;
    this.emit("source.started", {
      service: this.service,
      version: options.version ?? "0",
      host: hostname().slice(0, 200),
      pid: process.pid,
      start_time_s: wallSeconds() - process.uptime(),
    });
    this.#schedule(this.#intervalMs);
  }

  // ---- hot path ---------------------------------------------------------------------------------

  /**
   * Queue one event. Never blocks, never throws, does no I/O. Past `bufferSize` unsent events the
   * event is dropped and counted (reported later as `events.dropped`). The fields object is read
   * when the batch is encoded: do not mutate it afterwards.
   */
  emit<T extends EventType>(type: T, ...args: FieldsArg<T>): void {
    try {
      if (this.#buf.length + this.#pendingEvents < this.#cap) {
        this.#buf.push([type, wallSeconds(), (args[0] as Record<string, unknown> | undefined) ?? null]);
      } else {
        this.#dropped++;
      }
    } catch {
      this.#dropped++;
    }
  }

  // ---- control ----------------------------------------------------------------------------------

  /** Call `callback` on every heartbeat, before `source.heartbeat`; it should emit snapshots. */
  addSnapshot(callback: () => void): void {
    this.#snapshots.push(callback);
  }

  /** Events dropped so far: the buffer was full, or an event was too large for an entry (or unencodable). */
  get dropped(): number {
    return this.#dropped;
  }

  /** Whether the last round reached Redis. */
  get connected(): boolean {
    return this.#connected;
  }

  /** Events not yet written to Redis. */
  buffered(): number {
    return this.#buf.length + this.#pendingEvents;
  }

  /** Wait until everything emitted so far is written (or `timeoutMs`); true if it was. */
  async flush(timeoutMs = 5000): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      if (this.#allSent()) return true;
      this.#wake();
      await sleep(5);
    }
    return this.#allSent();
  }

  /**
   * Publish `source.stopped` and flush; resolves within about `timeoutMs` even when Redis hangs.
   * What could not be written by then is logged as lost.
   */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.#stopped) return;
    const deadline = performance.now() + timeoutMs;
    this.emit("source.stopped");
    while (performance.now() < deadline - 50) {
      if (this.#allSent()) break;
      this.#wake();
      await sleep(5);
    }
    await this.#halt(Math.max(50, deadline - performance.now()));
    const unreported = this.#dropped - this.#droppedReported;
    const left = this.buffered();
    if (left || unreported) {
      this.#logger.warn(
        `event bus unreachable at shutdown: ${left} events lost (${unreported} dropped earlier, unreported)`,
      );
    }
  }

  /**
   * @internal Stop publishing without `source.stopped`, as a crashed process would (tests). Events
   * not yet written are lost.
   */
  async _halt(): Promise<void> {
    await this.#halt(this.#timeoutMs);
  }

  async #halt(waitMs: number): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#round !== null) {
      let timer: NodeJS.Timeout | undefined;
      const finished = await Promise.race([
        this.#round.then(() => true),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), waitMs);
        }),
      ]);
      clearTimeout(timer);
      if (!finished) {
        this.#logger.warn(
          `event flusher still blocked on the bus at the shutdown deadline; ${this.buffered()} events not written`,
        );
      }
    }
    this.#dropClient();
  }

  #allSent(): boolean {
    return this.#buf.length === 0 && this.#pending.length === 0 && this.#dropped === this.#droppedReported;
  }

  // ---- flusher ----------------------------------------------------------------------------------

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#startRound(), delayMs);
    this.#timer.unref(); // like the reference publisher's daemon thread: never keeps the process alive
  }

  #wake(): void {
    if (this.#round !== null) this.#wakeAgain = true;
    else this.#schedule(0);
  }

  #startRound(): void {
    this.#timer = null;
    if (this.#round !== null || this.#stopped) return;
    this.#round = this.#runRound().finally(() => {
      this.#round = null;
      const again = this.#wakeAgain;
      this.#wakeAgain = false;
      this.#schedule(again ? 0 : this.#intervalMs);
    });
  }

  async #runRound(): Promise<void> {
    const now = performance.now();
    if (now >= this.#nextHeartbeat) {
      this.#nextHeartbeat = now + this.#heartbeatMs;
      this.#heartbeat();
    }
    try {
      await this.#flushOnce();
    } catch (err) {
      // never let the flusher die
      this.#logger.warn(`event flusher failed; retrying: ${String(err)}`);
    }
  }

  #heartbeat(): void {
    for (const callback of this.#snapshots) {
      try {
        callback();
      } catch (err) {
        this.#logger.warn(`snapshot callback failed: ${String(err)}`);
      }
    }
    this.emit("source.heartbeat");
  }

  async #flushOnce(): Promise<void> {
    if (performance.now() < this.#retryAt) return;
    const unreported = this.#dropped - this.#droppedReported;
    if (unreported && this.#connected) {
      // Bypasses the cap: this single event is what makes the loss visible.
      this.#buf.push(["events.dropped", wallSeconds(), { count: unreported }]);
      this.#droppedReported += unreported;
    }
    this.#drainIntoPending();
    try {
      const client = await this.#connect();
      while (this.#pending.length) {
        await this.#send(client, this.#pending.slice(0, 64));
        this.#drainIntoPending();
      }
      if (!this.#connected) this.#logger.info(`publishing to ${this.stream} as ${this.src}`);
      this.#connected = true;
      this.#backoffS = 0;
    } catch (err) {
      if (this.#connected || this.#backoffS === 0) {
        this.#logger.warn(`event bus unreachable (${String(err)}); buffering up to ${this.#cap} events`);
      }
      this.#connected = false;
      this.#dropClient(); // a timed-out connection is in an unknown state: start afresh
      this.#backoffS = Math.min(5, Math.max(0.05, this.#backoffS * 2));
      this.#retryAt = performance.now() + this.#backoffS * 1000 * (0.5 + Math.random() / 2);
    }
  }

  /** Move queued events into encoded batches, assigning sequence numbers in emit order. */
  #drainIntoPending(): void {
    const buf = this.#buf;
    this.#buf = [];
    for (let i = 0; i < buf.length; i += this.#batchSize) {
      const chunk = buf.slice(i, i + this.#batchSize);
      let events = this.#numbered(chunk);
      let encoded: Entries;
      try {
        encoded = encodeEntries(this.src, events);
      } catch {
        // An event msgpack cannot encode (a BigInt, a cycle): drop and count it, never stall on it.
        this.#seq -= events.length;
        const ok = chunk.filter((q) => this.#encodable(q));
        this.#dropped += chunk.length - ok.length;
        this.#logger.warn(`dropped ${chunk.length - ok.length} events that cannot be encoded`);
        events = this.#numbered(ok);
        if (events.length === 0) continue;
        encoded = encodeEntries(this.src, events);
      }
      this.#queueEntries(encoded, events.length);
    }
  }

  /**
   * Queue encoded entries of at most MAX_ENTRY_BYTES (the aggregator dead-letters larger ones, and the
   * shipped Redis refuses values over 2 MiB): a batch that encodes larger was split; an event too large
   * on its own was left out before it is written, is counted like any drop (`events.dropped`), and
   * takes no `seq` (encodeEntries lowered the seqs after it).
   */
  #queueEntries({ entries, dropped }: Entries, events: number): void {
    if (dropped.length) {
      this.#seq -= dropped.length;
      this.#dropped += dropped.length;
      this.#logger.warn(
        `dropped ${dropped.length} event(s) larger than a stream entry may be ` +
          `(${LIMITS.MAX_ENTRY_BYTES} bytes), e.g. a ${dropped[0]!.type}`,
      );
    }
    for (const entry of entries) this.#pending.push(entry);
    this.#pendingEvents += events - dropped.length;
  }

  #numbered(chunk: readonly Queued[]): WireEvent[] {
    return chunk.map(([type, ts, fields]) => ({ type, seq: ++this.#seq, ts, fields }));
  }

  #encodable([type, ts, fields]: Queued): boolean {
    try {
      encodeBatch(this.src, [{ type, seq: 1, ts, fields }]);
      return true;
    } catch {
      return false;
    }
  }

  async #send(client: Client, batch: Pending[]): Promise<void> {
    // One MULTI/EXEC, written in one round trip: an error reply to one XADD (OOM, READONLY, MISCONF)
    // aborts them all, so a retried entry can never land after its successor (where the aggregator
    // would skip it as a duplicate). See "Pitfalls" in docs/events.md.
    const multi = client.multi();
    for (const [, payload] of batch) {
      multi.addCommand(["XADD", this.stream, "MAXLEN", "~", this.#maxlen, "*", ENTRY_FIELD, payload]);
    }
    await withDeadline(multi.exec(), this.#timeoutMs, "writing a batch");
    for (const [n] of batch) {
      this.#pending.shift();
      this.#pendingEvents -= n;
      this.sentEvents += n;
      this.sentEntries += 1;
    }
  }

  async #connect(): Promise<Client> {
    if (this.#client !== null && this.#client.isReady) return this.#client;
    this.#dropClient();
    const client = newClient(this.#redisUrl, this.#timeoutMs);
    client.on("error", () => {}); // failures surface as rejected commands; never an unhandled 'error'
    client.unref();
    this.#client = client;
    await withDeadline(client.connect(), this.#timeoutMs, "connecting to Redis");
    return client;
  }

  #dropClient(): void {
    const client = this.#client;
    this.#client = null;
    if (client !== null) {
      try {
        client.destroy();
      } catch {
        // already closed
      }
    }
  }
}
