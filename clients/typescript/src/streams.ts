// Stream keys, partitioning and source ids (docs/events.md, "Streams" and "Sources and liveness").
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";

export const DEFAULT_PREFIX = "boilerhouse";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (IEEE 802.3, as zlib computes it) of `data`, as an unsigned 32-bit number. */
export function crc32(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) crc = CRC_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** The partition a source writes to: CRC-32 of its UTF-8 bytes modulo the partition count. */
export function partitionOf(src: string, partitions: number): number {
  return partitions > 1 ? crc32(Buffer.from(src, "utf8")) % partitions : 0;
}

/** `{prefix}:events:{p}`: the braces are literal (a Redis Cluster hash tag). */
export function streamKey(partition: number, prefix: string = DEFAULT_PREFIX): string {
  return `${prefix}:events:{${partition}}`;
}

/** A source id for one process life: `service:host:pid:nonce` (nonce: 8 random hex digits). */
export function makeSrc(service: string): string {
  return `${service}:${hostname().slice(0, 60)}:${process.pid}:${randomBytes(4).toString("hex")}`;
}
