// Entry size (docs/events.md, "Entry size"): the Publisher never writes an entry whose `b` value is larger
// than MAX_ENTRY_BYTES. Against a real redis-server run as the shipped one is (`--proto-max-bulk-len 2mb`:
// a longer XADD value is refused and the connection closed), and the real aggregator. The same properties
// tests/test_publisher.py and tests/test_codec.py check for the Python publisher.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { decode } from "@msgpack/msgpack";
import { encodeBatch, encodeEntries, LIMITS, Publisher, type PublisherOptions, type WireEvent } from "../src/index.js";
import { Aggregator, readStream, RedisServer, sampleKey } from "./support.js";

const MAX = LIMITS.MAX_ENTRY_BYTES;
const SRC = "ts:host:1:abcd";
const ACQUIRED = { pool_id: "p", status: "success", duration_s: 0.1, affinity: "miss" } as const;
/** emit() without the catalogue's types: events with an extra field (`pad`), which the aggregator ignores. */
type LooseEmit = (type: string, fields: object) => void;

let redis: RedisServer;

before(async () => {
  redis = await RedisServer.start(undefined, ["--proto-max-bulk-len", "2mb"]);
});

after(async () => {
  await redis.cleanup();
});

function publisher(warnings: string[], options: PublisherOptions = {}): Publisher {
  return new Publisher({ redisUrl: redis.url, flushIntervalMs: 20, heartbeatIntervalMs: 3_600_000,
    commandTimeoutMs: 2000, logger: { info: () => {}, warn: (m) => warnings.push(m) }, ...options });
}

/** `source.heartbeat` events numbered from `first`, padded (an unknown field) to about `sizes` bytes. */
function numbered(sizes: number[], first = 1): WireEvent[] {
  return sizes.map((size, i) => ({
    type: "source.heartbeat", seq: first + i, ts: 1.0, fields: { pad: "x".repeat(size) },
  }));
}

type Decoded = { v: number; src: string; events: Record<string, unknown>[] };

// ---- codec: encodeEntries ---------------------------------------------------------------------------

test("a batch that fits is one entry of the same bytes", () => {
  const events = numbered(Array(50).fill(100));
  const { entries, dropped } = encodeEntries(SRC, events);
  assert.deepEqual(entries, [[50, encodeBatch(SRC, events)]]);
  assert.deepEqual(dropped, []);
});

test("a batch too large is split into entries of at most MAX_ENTRY_BYTES, in seq order", () => {
  const events = numbered(Array(100).fill(40_000), 7); // ~4 MB
  const { entries, dropped } = encodeEntries(SRC, events);
  assert.deepEqual(dropped, []);
  assert.ok(entries.length >= 4, `${entries.length} entries`);
  assert.ok(entries.every(([, p]) => p.length <= MAX));
  const decoded = entries.map(([, p]) => decode(p) as Decoded);
  assert.deepEqual(entries.map(([n]) => n), decoded.map((b) => b.events.length));
  assert.deepEqual(decoded.flatMap((b) => b.events.map((e) => e.seq)), Array.from({ length: 100 }, (_, i) => 7 + i));
  assert.ok(decoded.every((b) => b.v === 1 && b.src === SRC));
  // Split where the sizes say: every entry but the last could not take the next event.
  assert.ok(entries.slice(0, -1).every(([, p]) => p.length + 40_000 > MAX - 100));
});

test("an event too large alone is left out and the seqs after it close the gap", () => {
  const events = numbered([10, MAX, 10, MAX * 3, 10], 41);
  const { entries, dropped } = encodeEntries(SRC, events);
  assert.deepEqual(dropped, [events[1], events[3]]);
  assert.equal(entries.length, 1);
  assert.ok(entries[0]![1].length <= MAX);
  const got = (decode(entries[0]![1]) as Decoded).events.map((e) => [e.seq, (e.pad as string).length]);
  assert.deepEqual(got, [[41, 10], [42, 10], [43, 10]]);
  assert.deepEqual(events.map((e) => e.seq), [41, 42, 43, 44, 45], "the caller's events are not changed");
});

test("a split at exactly the limit: the envelope's overhead is accounted exactly enough", () => {
  const one = encodeBatch(SRC, numbered([1000])).length;
  const { entries, dropped } = encodeEntries(SRC, numbered([1000, 1000, 1000]), one + 4);
  assert.deepEqual(dropped, []);
  assert.deepEqual(entries.map(([n]) => n), [1, 1, 1]);
  assert.ok(entries.every(([, p]) => p.length <= one + 4));
});

// ---- the Publisher against Redis (proto-max-bulk-len 2mb) and the aggregator -------------------------

test("a batch over 2 MiB is written in entries of at most 1 MiB; an event too large alone is dropped and reported", async () => {
  const warnings: string[] = [];
  const pub = publisher(warnings, { service: "bulky", batchSize: 5000 });
  const emit = (pub.emit as LooseEmit).bind(pub);
  const pad = "x".repeat(2000); // ~6 MB in one batch of 5000: Redis refuses any value over 2 MiB
  for (let i = 0; i < 3000; i++) {
    emit("container.acquired", { ...ACQUIRED, pad });
    if (i === 1500) emit("container.acquired", { ...ACQUIRED, pad: "y".repeat(MAX + 1) });
  }
  const flushed = await pub.flush(20_000);
  try {
    const left = `${pub.buffered()} events left; warnings: ${warnings.slice(0, 3).join(" | ")}`;
    assert.equal(flushed, true, `not written within 20 s: ${left}`);
    const entries = (await readStream(redis.url, pub.stream)).filter((e) => e.batch.src === pub.src);
    const sizes = entries.map((e) => e.fields.get("b")!.length);
    assert.ok(Math.max(...sizes) <= MAX, `entry sizes ${sizes.join(", ")}`);
    assert.ok(sizes.reduce((a, b) => a + b, 0) > 5 * MAX, `entry sizes ${sizes.join(", ")}`);
    const events = entries.flatMap((e) => e.batch.events);
    const gapless = Array.from({ length: events.length }, (_, i) => i + 1);
    assert.deepEqual(events.map((e) => e.seq), gapless, "one gapless sequence");
    assert.equal(events.filter((e) => e.type === "container.acquired").length, 3000);
    assert.ok(events.every((e) => e.pad === undefined || e.pad === pad), "the huge event is not written");
    assert.equal(pub.dropped, 1);
    const logged = warnings.some((w) => w.includes("dropped 1 event") && w.includes("container.acquired"));
    assert.ok(logged, warnings.join(" | "));
  } finally {
    await pub.close(5000);
  }

  const agg = await Aggregator.start(redis.url);
  try {
    const dropped = sampleKey("boilerhouse_events_dropped_total", { service: "bulky" });
    const stopped = sampleKey("boilerhouse_aggregator_events_applied_total", { type: "source.stopped" });
    const s = await agg.waitFor((x) => x.has(dropped) && x.has(stopped), "the drop reported and source.stopped applied");
    assert.equal(s.get(dropped), 1);
    assert.equal(s.get(sampleKey("boilerhouse_aggregator_events_applied_total", { type: "container.acquired" })), 3000);
    const health = [...s.keys()].filter((k) =>
      /^boilerhouse_(aggregator_dead_letters_total|events_lost_total)\b/.test(k));
    assert.deepEqual(health, [], "nothing too large, no gap counted as loss");
  } finally {
    await agg.stop();
  }
});

test("an event too large alone in an otherwise small batch is dropped; the source's seq stays gapless", async () => {
  const warnings: string[] = [];
  const pub = publisher(warnings, { service: "huge-one" });
  const emit = (pub.emit as LooseEmit).bind(pub);
  emit("affinity.evicted", { pool_id: "a" });
  emit("affinity.evicted", { pool_id: "huge", pad: "z".repeat(3 * MAX) }); // over what Redis accepts, too
  emit("affinity.evicted", { pool_id: "b" });
  try {
    assert.equal(await pub.flush(10_000), true, `not written: ${warnings.slice(0, 3).join(" | ")}`);
    pub.emit("affinity.evicted", { pool_id: "c" });
    assert.equal(await pub.flush(10_000), true);
  } finally {
    await pub.close(5000);
  }
  const entries = (await readStream(redis.url, pub.stream)).filter((e) => e.batch.src === pub.src);
  const events = entries.flatMap((e) => e.batch.events);
  assert.deepEqual(events.map((e) => e.seq), Array.from({ length: events.length }, (_, i) => i + 1));
  assert.deepEqual(events.filter((e) => e.type === "affinity.evicted").map((e) => e.pool_id), ["a", "b", "c"]);
  assert.deepEqual(events.filter((e) => e.type === "events.dropped").map((e) => e.count), [1]);
  assert.equal(events.at(-1)!.type, "source.stopped");
});

test("a batchSize above MAX_EVENTS_PER_BATCH is lowered to it (the aggregator sets larger entries aside)", async () => {
  const warnings: string[] = [];
  const pub = publisher(warnings, { service: "many", batchSize: 50_000 });
  const total = 2 * LIMITS.MAX_EVENTS_PER_BATCH + 5;
  for (let i = 0; i < total; i++) pub.emit("affinity.evicted", { pool_id: "a" });
  try {
    assert.equal(await pub.flush(20_000), true, `not written: ${warnings.slice(0, 3).join(" | ")}`);
  } finally {
    await pub.close(5000);
  }
  const entries = (await readStream(redis.url, pub.stream)).filter((e) => e.batch.src === pub.src);
  const counts = entries.map((e) => e.batch.events.length);
  assert.equal(Math.max(...counts), LIMITS.MAX_EVENTS_PER_BATCH, `events per entry ${counts.join(", ")}`);
  const evicted = entries.flatMap((e) => e.batch.events).filter((e) => e.type === "affinity.evicted");
  assert.equal(evicted.length, total);
});
