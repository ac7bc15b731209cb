// The encoder against docs/events.md: the worked example's exact bytes, and the encoding rules.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { decode } from "@msgpack/msgpack";
import { encodeBatch, SCHEMA_VERSION, type WireEvent } from "../src/index.js";
import { REPO } from "./support.js";

const EVENTS_MD = readFileSync(join(REPO, "docs", "events.md"), "utf8");

function codeBlock(lang: string, after: string): string {
  const start = EVENTS_MD.indexOf(after);
  assert.ok(start >= 0, `docs/events.md has no ${after}`);
  const match = new RegExp("```" + lang + "\\n([\\s\\S]*?)```").exec(EVENTS_MD.slice(start));
  assert.ok(match, `no ${lang} block after ${after}`);
  return match[1]!;
}

function wire(ev: Record<string, unknown>): WireEvent {
  const { type, seq, ts, ...fields } = ev;
  return { type: type as string, seq: seq as number, ts: ts as number, fields };
}

test("the worked example of docs/events.md encodes to exactly its bytes", () => {
  const doc = JSON.parse(codeBlock("json", "## Worked example")) as {
    v: number;
    src: string;
    events: Record<string, unknown>[];
  };
  const hex = codeBlock("hex", "## Worked example").replace(/\s+/g, "");
  const expected = Buffer.from(hex, "hex");
  assert.deepEqual(decode(expected), doc);
  const encoded = encodeBatch(doc.src, doc.events.map(wire), doc.v);
  assert.equal(encoded.toString("hex"), expected.toString("hex"));
});

test("number fields are float64 even when integral; integer fields are the smallest msgpack int", () => {
  const payload = encodeBatch("svc:h:1:00", [
    { type: "container.released", seq: 1, ts: 1767225600, fields: { pool_id: "p", status: "success", duration_s: 2 } },
    { type: "sync.finished", seq: 300, ts: 1.5, fields: { workload_id: "w", direction: "upload", mode: "sync",
      status: "success", duration_s: 0, bytes: 2 ** 40, files: 70000, error_type: null } },
  ]);
  const hex = payload.toString("hex");
  const f64 = (x: number): string => {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    return "cb" + b.toString("hex");
  };
  assert.ok(hex.includes("a274" + "73" + f64(1767225600)), "ts as float64"); // "ts"
  assert.ok(hex.includes("aa6475726174696f6e5f73" + f64(2)), "duration_s 2 as float64");
  assert.ok(hex.includes("aa6475726174696f6e5f73" + f64(0)), "duration_s 0 as float64");
  assert.ok(hex.includes("a3736571cd012c"), "seq 300 as uint16");
  assert.ok(hex.includes("a56279746573cf0000010000000000"), "bytes 2^40 as uint64");
  assert.ok(hex.includes("a566696c6573ce00011170"), "files 70000 as uint32");
  assert.ok(hex.includes("aa6572726f725f74797065c0"), "an optional null is nil");
  const batch = decode(payload) as { v: number; src: string; events: Record<string, unknown>[] };
  assert.equal(batch.v, SCHEMA_VERSION);
  assert.deepEqual(Object.keys(batch.events[0]!), ["type", "seq", "ts", "pool_id", "status", "duration_s"]);
});

test("undefined fields are omitted, strings are UTF-8 str, and the envelope cannot be overridden", () => {
  const payload = encodeBatch("ü:hôst:1:00", [
    { type: "sync.finished", seq: 1, ts: 1, fields: { workload_id: "w", error_type: undefined, type: "x", seq: 9 } },
  ]);
  const batch = decode(payload) as { src: string; events: Record<string, unknown>[] };
  assert.equal(batch.src, "ü:hôst:1:00");
  assert.deepEqual(batch.events[0], { type: "sync.finished", seq: 1, ts: 1, workload_id: "w" });
  const src = Buffer.from("ü:hôst:1:00", "utf8");
  assert.ok(payload.includes(Buffer.from([0xa0 | src.length, ...src])), "src as fixstr, not bin");
});

test("batches of 16 or more events get an array16 header", () => {
  const events = Array.from({ length: 20 }, (_, i) => ({ type: "source.heartbeat", seq: i + 1, ts: 1, fields: null }));
  const payload = encodeBatch("s", events);
  assert.ok(payload.includes(Buffer.from([0xa6, ...Buffer.from("events"), 0xdc, 0x00, 0x14])));
  assert.equal((decode(payload) as { events: unknown[] }).events.length, 20);
});
