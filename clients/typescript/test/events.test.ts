// The typed event definitions cannot drift from the Python catalogue (shared/events/schema.py).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { EVENT_TYPES, type EventFields, Publisher, TRACE_ID_PATTERN } from "../src/index.js";
import { PACKAGE, PYTHON, REPO } from "./support.js";

test("src/events.generated.ts is what scripts/generate_events.py writes from the Python catalogue", () => {
  const result = spawnSync(PYTHON, [join(PACKAGE, "scripts", "generate_events.py"), "--check"], {
    cwd: REPO,
    encoding: "utf8",
  });
  assert.equal(result.error, undefined, `cannot run ${PYTHON} (set BOILERHOUSE_PYTHON): ${String(result.error)}`);
  assert.equal(result.status, 0, result.stderr);
});

test("the catalogue metadata agrees with the field types the compiler checks", () => {
  // A sample of every type, typed by EventFields: the compiler rejects a missing or mistyped field.
  const samples: { [T in keyof EventFields]: EventFields[T] } = {
    "source.started": { service: "s", version: "1", host: "h", pid: 1, start_time_s: 1.5 },
    "source.heartbeat": {},
    "source.stopped": {},
    "events.dropped": { count: 1 },
    "pool.state": { pool_id: "p", workload_id: "w", size: 1, available: 1, borrowed: 0, pending: 0,
      min_size: 0, max_size: 1, target_size: 1, affinity_reservations: 0 },
    "pool.removed": { pool_id: "p", workload_id: "w" },
    "container.acquired": { pool_id: "p", status: "success", duration_s: 1, affinity: "hit" },
    "container.released": { pool_id: "p", status: "timeout", duration_s: 1 },
    "container.created": { pool_id: "p", workload_id: "w", status: "failure", duration_s: 1 },
    "container.destroyed": { pool_id: "p", status: "success", duration_s: 1 },
    "container.wiped": { pool_id: "p", status: "success", duration_s: 1 },
    "container.health_check_failed": { pool_id: "p" },
    "affinity.evicted": { pool_id: "p" },
    "sync.finished": { workload_id: "w", direction: "upload", mode: "sync", status: "success", duration_s: 1,
      bytes: 0, files: 0 },
    "sync.resynced": { workload_id: "w" },
    "sync.state": { workload_id: "w", running: 0, queued: 0, periodic_jobs: 0 },
    "http.request": { method: "GET", path: "/x", status: 200, duration_s: 1 },
  };
  assert.deepEqual(Object.keys(samples).sort(), Object.keys(EVENT_TYPES).sort());
  for (const [name, info] of Object.entries(EVENT_TYPES)) {
    const fields = samples[name as keyof EventFields] as Record<string, unknown>;
    const required = info.fields.filter((f) => !f.optional).map((f) => f.name);
    assert.deepEqual(Object.keys(fields).sort(), required.sort(), name);
    for (const f of info.fields) {
      if (!(f.name in fields)) continue;
      const v = fields[f.name];
      assert.equal(typeof v, f.kind === "int" || f.kind === "float" ? "number" : "string", `${name}.${f.name}`);
      if (f.choices) assert.ok(f.choices.includes(v as string), `${name}.${f.name}`);
    }
  }
});

test("trace_id: an optional W3C trace id on exactly the events that measure a duration", () => {
  const traced = Object.values(EVENT_TYPES)
    .filter((t) => t.fields.some((f) => f.name === "trace_id"))
    .map((t) => t.name)
    .sort();
  const timed = Object.values(EVENT_TYPES)
    .filter((t) => t.fields.some((f) => f.name === "duration_s"))
    .map((t) => t.name)
    .sort();
  assert.deepEqual(traced, timed);
  for (const name of traced) {
    const f = EVENT_TYPES[name].fields.find((x) => x.name === "trace_id");
    assert.equal(f?.kind, "trace_id", name);
    assert.equal(f?.optional, true, name);
  }
  assert.ok(TRACE_ID_PATTERN.test("4bf92f3577b34da6a3ce929d0e0e4736"));
  for (const bad of ["0".repeat(32), "4BF92F3577B34DA6A3CE929D0E0E4736", "4bf92f3577b34da6a3ce929d0e0e473",
    "4bf92f3577b34da6a3ce929d0e0e47360", "4bf92f3577b34da6a3ce929d0e0e473g", "4bf92f3577b34da6a3ce929d0e0e4736\n"]) {
    assert.equal(TRACE_ID_PATTERN.test(bad), false, JSON.stringify(bad));
  }
});

/** Never called: each line must fail to compile (tsc runs before the tests and fails on an unused directive). */
export function typeErrors(pub: Publisher): void {
  // @ts-expect-error unknown event type
  pub.emit("pool.exploded", {});
  // @ts-expect-error status is not one of its values
  pub.emit("container.acquired", { pool_id: "p", status: "ok", duration_s: 1, affinity: "hit" });
  // @ts-expect-error duration_s is missing
  pub.emit("container.released", { pool_id: "p", status: "success" });
  // @ts-expect-error a number field given a string
  pub.emit("events.dropped", { count: "3" });
  // @ts-expect-error fields are required for types that have fields
  pub.emit("affinity.evicted");
  // @ts-expect-error a type without fields takes none
  pub.emit("source.heartbeat", { pool_id: "p" });
  pub.emit("source.heartbeat");
  pub.emit("http.request", { method: "GET", path: "/x", status: 200, duration_s: 1,
    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" });
  // @ts-expect-error trace_id is a string
  pub.emit("container.wiped", { pool_id: "p", status: "success", duration_s: 1, trace_id: 7 });
  pub.emit("sync.finished", { workload_id: "w", direction: "upload", mode: "sync", status: "failure",
    duration_s: 1, bytes: 0, files: 0, error_type: null });
}
