"""The shipped Prometheus config and alert rules: promtool checks and unit tests, coverage of every alert."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.prometheus import ALERTS_YML, DEPLOY_PROMETHEUS, PROMETHEUS_YML, tool

ALERTS_TEST_YML = DEPLOY_PROMETHEUS / "alerts_test.yml"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", ALERTS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_check_config() -> None:
    result = promtool("check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: raising PoolExhausted's `for` to 1h makes them fail."""
    doc = yaml.safe_load(ALERTS_YML.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "PoolExhausted"]
    rule["for"] = "1h"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST_YML.read_text())
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "alertname: PoolExhausted" in output
    assert "alertname: HighSyncErrorRate" not in output  # only the broken rule's tests fail


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    seed = {"PoolExhausted", "HighSyncErrorRate", "SlowContainerAcquisition", "HighPoolUtilization"}
    pipeline = {
        "AggregatorDown",
        "AggregatorConsumerLag",
        "EventsLost",
        "EventsDropped",
        "EventsDeadLettered",
        "NoLiveProducers",
        "ProducerGoneSilent",
        "EventsStale",
    }
    assert seed | pipeline <= set(names)
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(names) - firing == set(), "alerts without a firing test"
    assert set(names) - quiet == set(), "alerts without a not-firing test"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    docs = (DEPLOY_PROMETHEUS.parents[1] / "docs" / "operations.md").read_text()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f"### {rule['alert']}" in docs, f"docs/operations.md does not explain {rule['alert']}"
