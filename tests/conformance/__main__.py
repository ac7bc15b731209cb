"""``python -m tests.conformance [--driver NAME] [CASE ...]``: run the conformance suite, print one line per case."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from services.embedded import EmbeddedRedis
from tests.conformance.cases import load_cases
from tests.conformance.drivers import DRIVERS, build_typescript
from tests.conformance.harness import run_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__)
    parser.add_argument("--driver", choices=sorted(DRIVERS), action="append", help="default: all")
    parser.add_argument("--no-build", action="store_true", help="use clients/typescript/dist as it is")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    drivers = args.driver or sorted(DRIVERS)
    cases = [c for c in load_cases() if not args.cases or c.name in args.cases]
    if "typescript" in drivers and not args.no_build:
        build_typescript()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.stderr.write("redis-server is not installed\n")
        return 2
    failed = passed = known = 0
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        server = EmbeddedRedis(workdir=Path(tmp) / "redis", binary=binary, allow_fake=False)
        server.start()
        try:
            for case in cases:
                for name in drivers:
                    if (case.kind == "raw") != (name == "raw"):
                        continue
                    workdir = Path(tmp) / f"{case.name}-{name}"
                    workdir.mkdir()
                    try:
                        run_case(case, DRIVERS[name], server.url, workdir)
                    except AssertionError as exc:
                        if case.known_issue:
                            known += 1
                            print(f"known issue {name} {case.name}: {case.known_issue}", flush=True)
                        else:
                            failed += 1
                            print(f"FAIL {name} {case.name}\n  {exc}", flush=True)
                    else:
                        if case.known_issue:
                            failed += 1
                            print(f"FAIL {name} {case.name}: passes; remove its known_issue", flush=True)
                        else:
                            passed += 1
                            print(f"ok   {name} {case.name}", flush=True)
        finally:
            server.stop()
    print(f"{passed} passed, {failed} failed" + (f" ({known} known issues)" if known else ""))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
