// Test support: a real redis-server started on a free port (stopped by pid), stream reading, paths.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { decode } from "@msgpack/msgpack";
import { createClient, RESP_TYPES } from "@redis/client";

/** The repository root (this file runs as clients/typescript/dist/test/support.js). */
export const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
/** The package directory, clients/typescript. */
export const PACKAGE = fileURLToPath(new URL("../../", import.meta.url));
/** The Python that has the aggregator installed (make test's venv unless BOILERHOUSE_PYTHON says). */
export const PYTHON = process.env.BOILERHOUSE_PYTHON ?? join(REPO, ".venv", "bin", "python");

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** A redis-server of the test's own, without persistence, on 127.0.0.1. */
export class RedisServer {
  readonly dir = mkdtempSync(join(tmpdir(), "bh-ts-redis-"));
  proc: ChildProcess | null = null;

  /** `extra`: more redis-server arguments, e.g. `["--proto-max-bulk-len", "2mb"]` as the shipped Redis runs. */
  constructor(
    readonly port: number,
    readonly extra: readonly string[] = [],
  ) {}

  static async start(port?: number, extra: readonly string[] = []): Promise<RedisServer> {
    const server = new RedisServer(port ?? (await freePort()), extra);
    await server.start();
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  get pid(): number {
    const pid = this.proc?.pid;
    if (pid === undefined) throw new Error("redis-server is not running");
    return pid;
  }

  async start(): Promise<void> {
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    this.proc = spawn("redis-server", [...args, ...this.extra, "--dir", this.dir], { stdio: "ignore" });
    writeFileSync(join(this.dir, "redis.pid"), String(this.proc.pid));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`redis-server on ${this.port} exited (port taken?)`);
      try {
        // The server that answers must be ours: another process may have taken the free port meanwhile.
        const info = String(await command(this.url, ["INFO", "server"]));
        if (!info.includes(`process_id:${this.proc.pid}\r\n`)) throw new Error(`port ${this.port}: not our redis-server`);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`redis-server on ${this.port} did not start: ${String(err)}`);
        await sleep(50);
      }
    }
  }

  /** SIGSTOP: Redis accepts connections but answers nothing (a hung server). */
  pause(): void {
    process.kill(this.pid, "SIGSTOP");
  }

  resume(): void {
    process.kill(this.pid, "SIGCONT");
  }

  /** Stop by pid (SIGTERM, SIGKILL after 5 s) and wait for the exit. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (proc === null) return;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    process.kill(proc.pid!, "SIGCONT");
    process.kill(proc.pid!, "SIGTERM");
    const timer = setTimeout(() => process.kill(proc.pid!, "SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }

  async cleanup(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Entry {
  id: string;
  fields: Map<string, Buffer>;
  batch: { v: number; src: string; events: Record<string, unknown>[] };
}

/** One command on a fresh connection, with timeouts (a test must fail, not hang, on a stuck server). */
export async function command(url: string, args: string[]): Promise<unknown> {
  const client = createClient({ url, socket: { connectTimeout: 3000, reconnectStrategy: false } });
  client.on("error", () => {});
  let timer: NodeJS.Timeout | undefined;
  const connected = Promise.race([
    client.connect(),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`connecting to ${url} timed out`)), 5000);
    }),
  ]);
  try {
    await connected;
    return await client.sendCommand(args, { timeout: 10_000, typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } });
  } finally {
    clearTimeout(timer);
    client.destroy();
  }
}

/** Every entry of `stream`, decoded (the batch of field `b`). */
export async function readStream(url: string, stream: string): Promise<Entry[]> {
  const reply = (await command(url, ["XRANGE", stream, "-", "+"])) as [Buffer, Buffer[]][];
  return reply.map(([id, flat]) => {
    const fields = new Map<string, Buffer>();
    for (let i = 0; i < flat.length; i += 2) fields.set(flat[i]!.toString(), flat[i + 1]!);
    return { id: id.toString(), fields, batch: decode(fields.get("b")!) as Entry["batch"] };
  });
}


/** One sample of an exposition: name, labels, value. */
export type Samples = Map<string, number>;

/** The key of a sample in Samples: `name{a="x",b="y"}` with the labels sorted. */
export function sampleKey(name: string, labels: Record<string, string> = {}): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`);
  return parts.length ? `${name}{${parts.join(",")}}` : name;
}

/** Parse the Prometheus text exposition (the aggregator's /metrics) into Samples. */
export function parseExposition(text: string): Samples {
  const samples: Samples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = JSON.parse(`"${l[2]!}"`) as string;
    }
    samples.set(sampleKey(m[1]!, labels), Number(m[3]));
  }
  return samples;
}

/**
 * The real aggregator (`boilerhouse aggregator`, run by PYTHON from the repository) on a free port,
 * reading `redisUrl`; stopped by pid. As the conformance harness runs it: fast checkpoints.
 */
export class Aggregator {
  readonly output: string[] = [];
  private constructor(
    readonly proc: ChildProcess,
    readonly url: string,
  ) {}

  static async start(redisUrl: string): Promise<Aggregator> {
    const port = await freePort();
    const proc = spawn(PYTHON, ["-m", "services.cli", "aggregator", "--redis-url", redisUrl, "--port", String(port)], {
      cwd: REPO,
      env: { ...process.env, PYTHONPATH: REPO, BOILERHOUSE_CHECKPOINT_INTERVAL_S: "0.05" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const agg = new Aggregator(proc, `http://127.0.0.1:${port}`);
    proc.stdout!.on("data", (d: Buffer) => agg.output.push(d.toString()));
    proc.stderr!.on("data", (d: Buffer) => agg.output.push(d.toString()));
    proc.once("error", (err) => agg.output.push(`cannot run ${PYTHON}: ${String(err)}`));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`aggregator exited (${PYTHON}; set BOILERHOUSE_PYTHON):\n${agg.log()}`);
      try {
        await agg.samples();
        return agg;
      } catch (err) {
        if (Date.now() > deadline) {
          await agg.stop();
          throw new Error(`aggregator did not answer: ${String(err)}\n${agg.log()}`);
        }
        await sleep(100);
      }
    }
  }

  log(): string {
    return this.output.join("").slice(-3000);
  }

  async samples(): Promise<Samples> {
    const response = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(5000) });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    return parseExposition(await response.text());
  }

  /** Scrape until `condition` holds (fail after `timeoutMs`, showing the samples of `prefix`). */
  async waitFor(condition: (s: Samples) => boolean, what: string, timeoutMs = 30_000): Promise<Samples> {
    const deadline = Date.now() + timeoutMs;
    let last: Samples = new Map();
    while (Date.now() < deadline) {
      last = await this.samples();
      if (condition(last)) return last;
      await sleep(100);
    }
    const shown = [...last]
      .filter(([k]) => k.startsWith("boilerhouse_aggregator_") || k.startsWith("boilerhouse_events_"))
      .map(([k, v]) => `${k} ${v}`);
    throw new Error(`${what}: not within ${timeoutMs} ms; last samples:\n${shown.join("\n")}`);
  }

  /** Stop by pid (SIGTERM, SIGKILL after 5 s) and wait for the exit. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    process.kill(proc.pid!, "SIGTERM");
    const timer = setTimeout(() => process.kill(proc.pid!, "SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }
}
