"""A real ``prometheus`` for tests: generated config on a free loopback port, pidfile, stop by pid, HTTP API."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml

from services.embedded import free_port

from .procs import Proc, wait_http
from .wait import wait_for

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEPLOY_PROMETHEUS = REPO / "deploy" / "prometheus"
PROMETHEUS_YML = DEPLOY_PROMETHEUS / "prometheus.yml"
ALERTS_YML = DEPLOY_PROMETHEUS / "alerts.yml"
AGGREGATOR_JOB = "boilerhouse-aggregator"


def tool(name: str) -> str:
    """Path of a required binary; a missing one fails the test (install it, never skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run ./scripts/install-system-deps.sh (make test does)")
    return path


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error; carries its ``errorType`` and message."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant-vector result (or a scalar, with no labels)."""

    labels: dict[str, str]
    value: float


def scrape_config(
    targets: list[str],
    *,
    self_address: str,
    scrape_interval: str = "1s",
    rule_files: list[Path] | None = None,
    auth: dict[str, Any] | None = None,
    template: Path = PROMETHEUS_YML,
) -> dict[str, Any]:
    """The shipped ``prometheus.yml`` pointed at ``targets``, with test intervals and absolute rule paths.

    ``auth`` is merged into the aggregator job (``basic_auth: {...}`` or ``authorization: {...}``).
    """
    config = yaml.safe_load(template.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["rule_files"] = [str(p) for p in (rule_files if rule_files is not None else [ALERTS_YML])]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    if AGGREGATOR_JOB not in jobs:
        raise AssertionError(f"{template} has no {AGGREGATOR_JOB} job")
    jobs[AGGREGATOR_JOB]["static_configs"] = [{"targets": targets}]
    jobs[AGGREGATOR_JOB].update(auth or {})
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [{"targets": [self_address]}]
    return config


class Prometheus:
    """One Prometheus server scraping ``targets`` (host:port) every ``scrape_interval``.

    Parameters:
        workdir: where the generated config, the TSDB, the pidfile and the log go.
        targets: aggregator addresses for the ``boilerhouse-aggregator`` job.
        scrape_interval: also the rule evaluation interval and scrape timeout.
        rule_files: rule files to load (the shipped alerts by default).
        auth: extra scrape settings for the aggregator job (basic auth, bearer token).
        flags: extra command-line flags (``--enable-feature=exemplar-storage``).
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        *,
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        auth: dict[str, Any] | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.flags = flags
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = scrape_config(
            targets,
            self_address=self.address,
            scrape_interval=scrape_interval,
            rule_files=rule_files,
            auth=auth,
        )
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.proc: Proc | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30.0) -> Self:
        args = [
            tool("prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
            *self.flags,
        ]
        self.proc = Proc(args, self.workdir, "prometheus")
        try:
            wait_http(self.url + "/-/ready", timeout=timeout, proc=self.proc)
        except AssertionError:
            self.stop()
            raise
        logger.info("prometheus pid %d on %s", self.proc.pid, self.url)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.stop()
        self.http.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP API -------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        body = r.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Evaluate ``expr`` (instant query); a scalar comes back as one unlabelled sample."""
        data = self._get("/api/v1/query", query=expr, time=at)
        if data["resultType"] == "vector":
            return [Sample(dict(r["metric"]), float(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        raise PrometheusError(f"{expr}: unexpected result type {data['resultType']}")

    def raw_samples(self, selector: str, window: str, at: float) -> list[tuple[dict[str, str], list[float]]]:
        """The stored sample timestamps of every series ``selector`` matches in ``[at - window, at]``."""
        data = self._get("/api/v1/query", query=f"{selector}[{window}]", time=at)
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{selector}[{window}]: unexpected result type {data['resultType']}")
        return [(dict(r["metric"]), [float(t) for t, _ in r["values"]]) for r in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr``; None if the result is empty."""
        result = self.query(expr, at)
        if len(result) > 1:
            raise AssertionError(f"{expr}: expected one sample, got {result}")
        return result[0].value if result else None

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: per series, its labels and the exemplars stored in [start, end]."""
        return list(self._get("/api/v1/query_exemplars", query=expr, start=start, end=end))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def wait_for(self, expr: str, predicate: Any, timeout: float = 30.0) -> list[Sample]:
        """Poll ``expr`` until ``predicate(result)`` holds; return that result."""
        return wait_for(
            lambda: self.query(expr),
            f"{expr} satisfies the condition",
            within_s=timeout,
            poll_s=0.2,
            accept=predicate,
        )

    def wait_scraped(self, after: float, job: str = AGGREGATOR_JOB, timeout: float = 30.0) -> None:
        """Wait until every target of ``job`` was scraped successfully at a time later than ``after``."""

        def fresh(result: list[Sample]) -> bool:
            return bool(result) and all(s.value > after for s in result)

        self.wait_for(f'timestamp(up{{job="{job}"}} == 1)', fresh, timeout)
