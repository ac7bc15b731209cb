// Partitioning and keys as docs/events.md describes them.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as zlib from "node:zlib";
import { crc32, ID_PATTERN, makeSrc, partitionOf, streamKey } from "../src/index.js";

test("crc32 is IEEE CRC-32 as zlib computes it", () => {
  assert.equal(crc32(Buffer.from("123456789")), 0xcbf43926);
  const zcrc = (zlib as unknown as { crc32?: (data: Buffer) => number }).crc32;
  for (const src of ["api:host1:4242:9f2c1a7b", "sync-worker:h:1:00", "ü:ñ:1:x", ""]) {
    if (zcrc) assert.equal(crc32(Buffer.from(src)), zcrc(Buffer.from(src)));
    for (const n of [2, 4, 7]) assert.equal(partitionOf(src, n), crc32(Buffer.from(src, "utf8")) % n);
    assert.equal(partitionOf(src, 1), 0);
  }
});

test("stream keys carry the partition in literal braces", () => {
  assert.equal(streamKey(0), "boilerhouse:events:{0}");
  assert.equal(streamKey(0).length, 22);
  assert.equal(streamKey(3, "bh"), "bh:events:{3}");
});

test("source ids are service:host:pid:nonce, new per call", () => {
  const a = makeSrc("billing");
  const parts = a.split(":");
  assert.equal(parts.length, 4);
  assert.equal(parts[0], "billing");
  assert.equal(parts[2], String(process.pid));
  assert.match(parts[3]!, /^[0-9a-f]{8}$/);
  assert.notEqual(makeSrc("billing"), a);
  assert.match("billing", ID_PATTERN);
});
