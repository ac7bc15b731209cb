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

  constructor(readonly port: number) {}

  static async start(port?: number): Promise<RedisServer> {
    const server = new RedisServer(port ?? (await freePort()));
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
    this.proc = spawn("redis-server", [...args, "--dir", this.dir], { stdio: "ignore" });
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

