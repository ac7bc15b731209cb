// The one place where batches are encoded (docs/events.md, "Stream entries"): a msgpack map
// {"v", "src", "events"}; strings as str, integers as the smallest msgpack int, and the fields the
// catalogue calls numbers (`ts`, `duration_s`, `start_time_s`) always as float64, as in the worked
// example of docs/events.md. Values are encoded by @msgpack/msgpack; only the map and array headers
// that frame them are written here, so each value can get its own number encoding.
import { Encoder } from "@msgpack/msgpack";
import { EVENT_TYPES, LIMITS, SCHEMA_VERSION } from "./events.generated.js";

/** The one field of a stream entry; its value is the encoded batch. */
export const ENTRY_FIELD = "b";

/** An event as it goes on the wire: the envelope plus the fields of its type. */
export interface WireEvent {
  readonly type: string;
  readonly seq: number;
  readonly ts: number;
  readonly fields: Readonly<Record<string, unknown>> | null;
}

const plain = new Encoder();
const float64 = new Encoder({ forceIntegerToFloat: true });

/** Field names written as float64, per event type (from the generated catalogue). */
const FLOAT_FIELDS: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  Object.values(EVENT_TYPES).map((t) => [
    t.name,
    new Set(t.fields.filter((f) => f.kind === "float").map((f) => f.name)),
  ]),
);
const NO_FLOATS: ReadonlySet<string> = new Set();

function header(count: number, fix: number, b16: number, b32: number): Uint8Array {
  if (count < 16) return Uint8Array.of(fix | count);
  if (count < 0x10000) return Uint8Array.of(b16, count >>> 8, count & 0xff);
  return Uint8Array.of(b32, count >>> 24, (count >>> 16) & 0xff, (count >>> 8) & 0xff, count & 0xff);
}

/** Encoded keys and type names (a few dozen distinct strings), so each is encoded once. */
const names = new Map<string, Uint8Array>();
function name(s: string): Uint8Array {
  let bytes = names.get(s);
  if (bytes === undefined) {
    bytes = plain.encode(s);
    if (names.size < 1000) names.set(s, bytes);
  }
  return bytes;
}

const mapHeader = (n: number): Uint8Array => header(n, 0x80, 0xde, 0xdf);
const arrayHeader = (n: number): Uint8Array => header(n, 0x90, 0xdc, 0xdd);

function encodeEvent(ev: WireEvent, parts: Uint8Array[]): void {
  const floats = FLOAT_FIELDS.get(ev.type) ?? NO_FLOATS;
  const entries: [string, unknown][] = [];
  if (ev.fields !== null) {
    for (const [key, value] of Object.entries(ev.fields)) {
      // Omitted optional fields; the envelope is always the publisher's own.
      if (value !== undefined && key !== "type" && key !== "seq" && key !== "ts") entries.push([key, value]);
    }
  }
  parts.push(mapHeader(3 + entries.length));
  parts.push(name("type"), name(ev.type));
  parts.push(name("seq"), plain.encode(ev.seq));
  parts.push(name("ts"), float64.encode(ev.ts));
  for (const [key, value] of entries) {
    parts.push(name(key), (floats.has(key) && typeof value === "number" ? float64 : plain).encode(value));
  }
}

/** Encode one batch: the value of field `b` of one stream entry. */
export function encodeBatch(src: string, events: readonly WireEvent[], version: number = SCHEMA_VERSION): Buffer {
  const parts: Uint8Array[] = [
    mapHeader(3),
    name("v"),
    plain.encode(version),
    name("src"),
    plain.encode(src),
    name("events"),
    arrayHeader(events.length),
  ];
  for (const ev of events) encodeEvent(ev, parts);
  return Buffer.concat(parts);
}

/** Stream entries of numbered events, and the events left out (see encodeEntries). */
export interface Entries {
  /** (number of events, payload) per entry, in `seq` order. */
  readonly entries: [events: number, payload: Buffer][];
  /** Events left out because each alone encodes larger than the limit, in order. */
  readonly dropped: WireEvent[];
}

/**
 * Encode numbered events (consecutive `seq`) as stream entries of at most `maxBytes` each (the
 * aggregator dead-letters larger ones as `too_large`; docs/events.md, "Entry size"), as
 * shared/events/codec.py `encode_entries` does.
 *
 * The usual batch is one entry and one encoding; a larger one is split where its events' sizes say. An
 * event that alone encodes larger than `maxBytes` is left out, and the `seq` of the events after it is
 * lowered to close the gap (in new event objects; `events` is not changed), so `seq` numbers what is
 * written: a dropped event is the producer's to count (`events.dropped`), never a gap.
 * Throws (as encodeBatch does) when an event cannot be encoded at all.
 */
export function encodeEntries(
  src: string,
  events: readonly WireEvent[],
  maxBytes: number = LIMITS.MAX_ENTRY_BYTES,
): Entries {
  const payload = encodeBatch(src, events);
  if (payload.length <= maxBytes) return { entries: [[events.length, payload]], dropped: [] };
  // The envelope with an empty list (a 1-byte array header), plus the 5 bytes an array32 header takes.
  const overhead = encodeBatch(src, []).length - 1 + 5;
  const sizes = events.map((ev) => {
    const parts: Uint8Array[] = [];
    encodeEvent(ev, parts);
    return parts.reduce((n, part) => n + part.length, 0);
  }); // a lowered seq encodes in as many bytes or fewer
  const dropped: WireEvent[] = [];
  const kept: [WireEvent, number][] = [];
  const first = events[0]?.seq ?? 1;
  events.forEach((ev, i) => {
    const size = sizes[i]!;
    if (overhead + size > maxBytes) dropped.push(ev);
    else kept.push([dropped.length ? { ...ev, seq: first + kept.length } : ev, size]);
  });
  const entries: [number, Buffer][] = [];
  let chunk: WireEvent[] = [];
  let used = overhead;
  for (const [ev, size] of kept) {
    if (chunk.length && used + size > maxBytes) {
      entries.push([chunk.length, encodeBatch(src, chunk)]);
      chunk = [];
      used = overhead;
    }
    chunk.push(ev);
    used += size;
  }
  if (chunk.length) entries.push([chunk.length, encodeBatch(src, chunk)]);
  return { entries, dropped };
}
