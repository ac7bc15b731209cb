// The conformance suite (conformance/cases) with this package's Publisher as the producer: the Python
// harness starts a real redis-server and aggregator per case, runs conformance/driver.ts, compares /metrics.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { PYTHON, REPO } from "./support.js";

// Under `make test` pytest runs each case with this driver itself (tests/conformance); not twice.
const covered = process.env.BOILERHOUSE_CONFORMANCE_IN_PYTEST === "1";
const cases = readdirSync(join(REPO, "conformance", "cases")).filter((f) => f.endsWith(".json")).sort();

test("the conformance suite has cases", () => {
  assert.ok(cases.length > 0);
});

for (const file of cases) {
  const name = file.slice(0, -".json".length);
  const doc = JSON.parse(readFileSync(join(REPO, "conformance", "cases", file), "utf8")) as { steps: object[] };
  if (doc.steps.some((step) => "xadd" in step)) continue; // raw cases: entries the harness writes itself
  test(`conformance: ${name}`, { skip: covered && "run by pytest (tests/conformance)" }, () => {
    const result = spawnSync(PYTHON, ["-m", "tests.conformance", "--driver", "typescript", "--no-build", name], {
      cwd: REPO,
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(result.error, undefined, `cannot run ${PYTHON} (set BOILERHOUSE_PYTHON): ${String(result.error)}`);
    assert.equal(result.status, 0, `${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /^1 passed, 0 failed/m);
  });
}
