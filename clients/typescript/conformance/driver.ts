// Conformance driver: publishes the emit steps of one case file (conformance/cases/*.json) with this
// package's Publisher. The Python harness (tests/conformance) runs it, waits for the aggregator and
// compares /metrics with the case. Usage: node dist/conformance/driver.js --redis-url URL CASE.json
import { readFileSync } from "node:fs";
import { type EventType, Publisher } from "../src/index.js";

/** Publisher options as a case names them (conformance/README.md, "Sources"). */
interface SourceOptions {
  service?: string;
  version?: string;
  partitions?: number;
  buffer_size?: number;
  batch_size?: number;
  flush_interval_s?: number;
  heartbeat_interval_s?: number;
}

type Step =
  | { emit: EventType; fields?: Record<string, unknown>; source?: string; repeat?: number }
  | { flush: string }
  | { close: string }
  | { abandon: string }
  | { sleep_s: number };

interface CaseFile {
  name: string;
  partitions?: number;
  sources?: Record<string, SourceOptions>;
  steps: Step[];
}

const FLUSH_TIMEOUT_MS = 10_000;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (s: number | undefined): number | undefined => (s === undefined ? undefined : s * 1000);

async function runCase(doc: CaseFile, redisUrl: string): Promise<void> {
  const pubs = new Map<string, Publisher>();
  const done = new Set<string>();

  const pub = (name: string): Publisher => {
    let p = pubs.get(name);
    if (p === undefined) {
      const o = doc.sources?.[name] ?? {};
      p = new Publisher({
        redisUrl,
        service: o.service ?? "conformance",
        version: o.version ?? "1.0.0",
        partitions: o.partitions ?? doc.partitions ?? 1,
        bufferSize: o.buffer_size,
        batchSize: o.batch_size,
        flushIntervalMs: seconds(o.flush_interval_s),
        heartbeatIntervalMs: seconds(o.heartbeat_interval_s ?? 3600),
      });
      pubs.set(name, p);
    }
    return p;
  };

  const flushed = async (name: string): Promise<void> => {
    if (!(await pub(name).flush(FLUSH_TIMEOUT_MS))) throw new Error(`source ${name}: flush timed out`);
  };

  const abandon = async (name: string): Promise<void> => {
    await flushed(name);
    await pub(name)._halt(); // like a crashed process after its last write: no source.stopped
    done.add(name);
  };

  for (const step of doc.steps) {
    if ("emit" in step) {
      const p = pub(step.source ?? "main");
      for (let i = 0; i < (step.repeat ?? 1); i++) {
        // A fresh object per event, as a producer would build it; the types are the case's business.
        (p.emit as (type: string, fields?: object) => void)(step.emit, { ...step.fields });
      }
    } else if ("flush" in step) {
      await flushed(step.flush);
    } else if ("close" in step) {
      const p = pub(step.close);
      await p.close(FLUSH_TIMEOUT_MS);
      if (p.buffered() !== 0) throw new Error(`source ${step.close}: close left ${p.buffered()} events unwritten`);
      done.add(step.close);
    } else if ("abandon" in step) {
      await abandon(step.abandon);
    } else if ("sleep_s" in step) {
      await sleep(step.sleep_s * 1000);
    } else {
      throw new Error(`step not for a language driver: ${JSON.stringify(step)}`);
    }
  }
  for (const name of pubs.keys()) if (!done.has(name)) await abandon(name);
}

async function main(argv: string[]): Promise<number> {
  const i = argv.indexOf("--redis-url");
  const redisUrl = i >= 0 ? argv[i + 1] : undefined;
  const file = argv.filter((_, j) => j !== i && j !== i + 1)[0];
  if (redisUrl === undefined || file === undefined) {
    process.stderr.write("usage: driver.js --redis-url URL CASE.json\n");
    return 2;
  }
  await runCase(JSON.parse(readFileSync(file, "utf8")) as CaseFile, redisUrl);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
