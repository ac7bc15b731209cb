// The Publisher against a real redis-server: batching, sequence numbers, outages, drops, heartbeats,
// shutdown deadline. The same properties tests/test_publisher.py checks for the Python publisher.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Publisher, type PublisherOptions, partitionOf, streamKey } from "../src/index.js";
import { freePort, readStream, RedisServer, sleep } from "./support.js";

let redis: RedisServer;
const quiet = { info: () => {}, warn: () => {} };

before(async () => {
  redis = await RedisServer.start();
});

after(async () => {
  await redis.cleanup();
});

function publisher(options: PublisherOptions = {}): Publisher {
  return new Publisher({ redisUrl: redis.url, service: "ts-test", version: "9.9.9", flushIntervalMs: 10,
    heartbeatIntervalMs: 3_600_000, logger: quiet, ...options });
}

/** The events one publisher wrote, in stream order. */
async function eventsOf(url: string, pub: Publisher): Promise<Record<string, unknown>[]> {
  return (await readStream(url, pub.stream)).filter((e) => e.batch.src === pub.src).flatMap((e) => e.batch.events);
}

function assertSeqRun(events: Record<string, unknown>[]): void {
  assert.deepEqual(events.map((e) => e.seq), Array.from({ length: events.length }, (_, i) => i + 1));
}

test("events are batched into entries of one field b, numbered 1..n in emit order across entries", async () => {
  const pub = publisher({ batchSize: 7 });
  for (let i = 0; i < 50; i++) pub.emit("container.health_check_failed", { pool_id: `p${i}` });
  await pub.close();
  const entries = (await readStream(redis.url, pub.stream)).filter((e) => e.batch.src === pub.src);
  assert.ok(entries.length >= 8, `50 + 2 events in entries of at most 7: ${entries.length} entries`);
  for (const e of entries) {
    assert.deepEqual([...e.fields.keys()], ["b"]);
    assert.equal(e.batch.v, 1);
    assert.ok(e.batch.events.length <= 7);
  }
  const events = entries.flatMap((e) => e.batch.events);
  assertSeqRun(events);
  assert.equal(events.length, 52);
  const [first, ...rest] = events;
  assert.equal(first!.type, "source.started");
  assert.equal(first!.service, "ts-test");
  assert.equal(first!.version, "9.9.9");
  assert.equal(first!.pid, process.pid);
  assert.ok(typeof first!.start_time_s === "number" && first!.start_time_s <= (first!.ts as number));
  assert.deepEqual(rest.slice(0, 50).map((e) => e.pool_id), Array.from({ length: 50 }, (_, i) => `p${i}`));
  assert.equal(rest.at(-1)!.type, "source.stopped");
  assert.equal(pub.sentEvents, 52);
  assert.equal(pub.buffered(), 0);
});

test("a source writes to partition CRC-32(src) mod P", async () => {
  const pubs = Array.from({ length: 6 }, () => publisher({ partitions: 4 }));
  for (const p of pubs) {
    assert.equal(p.partition, partitionOf(p.src, 4));
    assert.equal(p.stream, streamKey(p.partition));
    p.emit("affinity.evicted", { pool_id: "p" });
  }
  await Promise.all(pubs.map((p) => p.close()));
  for (const p of pubs) {
    const events = await eventsOf(redis.url, p);
    assert.deepEqual(events.map((e) => e.type), ["source.started", "affinity.evicted", "source.stopped"]);
  }
});

test("unreachable Redis: emit never throws, drops beyond the buffer are counted and reported once it is back", async () => {
  const port = await freePort();
  const pub = new Publisher({ redisUrl: `redis://127.0.0.1:${port}/0`, service: "offline", bufferSize: 100,
    flushIntervalMs: 10, heartbeatIntervalMs: 3_600_000, commandTimeoutMs: 500, logger: quiet });
  for (let i = 0; i < 1000; i++) pub.emit("container.health_check_failed", { pool_id: "p" });
  assert.equal(pub.buffered(), 100);
  assert.equal(pub.dropped, 901); // source.started took one of the 100 places
  assert.equal(await pub.flush(300), false);
  assert.equal(pub.connected, false);
  const server = await RedisServer.start(port);
  try {
    assert.equal(await pub.flush(15_000), true);
    await pub.close();
    const events = await eventsOf(server.url, pub);
    assertSeqRun(events); // dropped events never took a sequence number
    const dropped = events.filter((e) => e.type === "events.dropped");
    assert.deepEqual(dropped.map((e) => e.count), [901]);
    assert.equal(events.filter((e) => e.type === "container.health_check_failed").length, 99);
  } finally {
    await server.cleanup();
  }
});

test("a hung Redis: emit does not wait; the batches are retried with the same seqs once it answers", async () => {
  const server = await RedisServer.start();
  try {
    const pub = new Publisher({ redisUrl: server.url, service: "hung", flushIntervalMs: 10,
      heartbeatIntervalMs: 3_600_000, commandTimeoutMs: 300, logger: quiet });
    assert.equal(await pub.flush(5000), true);
    server.pause();
    for (let i = 0; i < 10_000; i++) pub.emit("affinity.evicted", { pool_id: "p" });
    assert.equal(pub.dropped, 0);
    await sleep(1000); // several timed-out rounds
    server.resume();
    await pub.close(10_000);
    assert.equal(pub.buffered(), 0);
    const events = await eventsOf(server.url, pub);
    // A timed-out XADD may have been executed after all: a retry then repeats the same seqs, which
    // the aggregator skips. Every seq is there, and a repeated one is the same event.
    const bySeq = new Map<number, string>();
    for (const e of events) {
      const key = JSON.stringify({ ...e, ts: 0 });
      const seen = bySeq.get(e.seq as number);
      if (seen !== undefined) assert.equal(seen, key, "a repeated seq is the same event");
      bySeq.set(e.seq as number, key);
    }
    assert.deepEqual([...bySeq.keys()].sort((a, b) => a - b), Array.from({ length: 10_002 }, (_, i) => i + 1));
  } finally {
    await server.cleanup();
  }
});

test("close() keeps its deadline while Redis hangs", async () => {
  const server = await RedisServer.start();
  try {
    const pub = new Publisher({ redisUrl: server.url, service: "deadline", flushIntervalMs: 10, logger: quiet });
    assert.equal(await pub.flush(5000), true);
    server.pause();
    pub.emit("affinity.evicted", { pool_id: "p" });
    const start = performance.now();
    await pub.close(1000);
    const elapsed = performance.now() - start;
    // The deadline is the contract (a generous margin for a loaded machine; this is no benchmark).
    assert.ok(elapsed < 1000 + 2000, `close(1000) took ${elapsed} ms`);
    assert.ok(pub.buffered() > 0, "nothing could be written");
  } finally {
    await server.cleanup();
  }
});

test("heartbeats every interval, after the registered snapshots", async () => {
  const pub = publisher({ heartbeatIntervalMs: 100 });
  let n = 0;
  pub.addSnapshot(() => {
    n += 1;
    pub.emit("sync.state", { workload_id: "w", running: n, queued: 0, periodic_jobs: 0 });
  });
  pub.addSnapshot(() => {
    throw new Error("a failing snapshot callback does not stop heartbeats");
  });
  await sleep(800);
  await pub.close();
  const events = await eventsOf(redis.url, pub);
  assertSeqRun(events);
  const types = events.map((e) => e.type);
  const beats = types.filter((t) => t === "source.heartbeat").length;
  assert.ok(beats >= 2, `${beats} heartbeats in 800 ms at 100 ms`);
  types.forEach((t, i) => {
    if (t === "source.heartbeat") assert.equal(types[i - 1], "sync.state");
  });
});

test("an event msgpack cannot encode is dropped and counted, and the rest goes through", async () => {
  const pub = publisher();
  const cyclic: Record<string, unknown> = { pool_id: "p" };
  cyclic.self = cyclic;
  pub.emit("affinity.evicted", { pool_id: "a" });
  (pub.emit as (t: string, f: object) => void)("affinity.evicted", cyclic);
  (pub.emit as (t: string, f: object) => void)("events.dropped", { count: 10n });
  pub.emit("affinity.evicted", { pool_id: "b" });
  assert.equal(await pub.flush(5000), true);
  await pub.close();
  const events = await eventsOf(redis.url, pub);
  assertSeqRun(events);
  assert.deepEqual(events.filter((e) => e.type === "affinity.evicted").map((e) => e.pool_id), ["a", "b"]);
  assert.deepEqual(events.filter((e) => e.type === "events.dropped").map((e) => e.count), [2]);
});

test("a process that never calls close() still exits (the publisher keeps nothing alive)", async () => {
  const index = fileURLToPath(new URL("../src/index.js", import.meta.url));
  const script = `
    import { Publisher } from ${JSON.stringify(index)};
    const pub = new Publisher({ redisUrl: ${JSON.stringify(redis.url)}, service: "exiting" });
    pub.emit("affinity.evicted", { pool_id: "p" });
    await pub.flush(5000);
    pub.emit("affinity.evicted", { pool_id: "p" });
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: "inherit" });
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(null);
    }, 20_000);
    child.on("exit", (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  assert.equal(code, 0, "the child did not exit on its own");
});
