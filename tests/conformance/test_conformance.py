"""Every conformance case against a real aggregator: emit cases with each language's publisher, raw cases as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.cases import CASES_DIR, load_cases
from tests.conformance.drivers import DRIVERS, build_typescript
from tests.conformance.harness import run_case

CASES = load_cases()
PARAMS = [
    pytest.param(
        driver,
        case,
        id=f"{driver}-{case.name}",
        # A contract bug the lead has to fix: strict, so the case fails loudly once it is fixed.
        marks=[pytest.mark.xfail(reason=case.known_issue, raises=AssertionError, strict=True)]
        if case.known_issue
        else [],
    )
    for case in CASES
    for driver in (("python", "typescript") if case.kind == "emit" else ("raw",))
]


@pytest.fixture(scope="module")
def typescript_built() -> None:
    build_typescript()


def test_the_suite_has_cases_of_both_kinds() -> None:
    assert {c.kind for c in CASES} == {"emit", "raw"}, f"cases in {CASES_DIR}"


@pytest.mark.parametrize(("driver", "case"), PARAMS)
def test_case(
    driver: str, case: object, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if driver == "typescript":
        request.getfixturevalue("typescript_built")
    run_case(case, DRIVERS[driver], redis_url, tmp_path)  # type: ignore[arg-type]
