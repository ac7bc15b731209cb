"""compose.yaml, validated by the real Compose v2 (`docker compose config`, no engine), and its Dockerfile."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.queries import REPO
from tests.support.compose import compose_config
from tests.support.prometheus import AGGREGATOR_JOB, PROMETHEUS_YML

SERVICES = {"redis", "api", "aggregator", "prometheus", "grafana"}
#: Secrets read with shared.settings.env_secret, which also takes ``NAME_FILE``.
SECRET_VARIABLES = (
    "BOILERHOUSE_METRICS_PASSWORD",
    "BOILERHOUSE_METRICS_BEARER_TOKEN",
    "BOILERHOUSE_REDIS_PASSWORD",
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


def test_compose_config_is_valid_and_complete(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    for name, service in config["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_redis_keeps_an_append_only_file(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])


def test_redis_runs_with_the_acl_users_and_each_service_connects_as_its_own(config: dict[str, Any]) -> None:
    """deploy/redis/users.acl is Redis' ACL file; api and aggregator log in with their own user and
    password (a Compose secret holding the password the ACL file has the hash of)."""
    redis = config["services"]["redis"]
    command = redis["command"]
    acl_path = command[command.index("--aclfile") + 1]
    mount = next(v for v in redis["volumes"] if v["target"] == acl_path)
    acl_file = REPO / "deploy" / "redis" / "users.acl"
    assert Path(mount["source"]).resolve() == acl_file.resolve() and mount["read_only"] is True
    hashes = {
        line.split()[1]: line.split()[3][1:] for line in acl_file.read_text().splitlines() if "#" in line
    }
    for name, user in (("api", "boilerhouse-producer"), ("aggregator", "boilerhouse-aggregator")):
        env = config["services"][name]["environment"]
        assert env["BOILERHOUSE_REDIS_USERNAME"] == user
        secret_name = Path(env["BOILERHOUSE_REDIS_PASSWORD_FILE"]).name
        assert env["BOILERHOUSE_REDIS_PASSWORD_FILE"] == f"/run/secrets/{secret_name}"
        assert secret_name in {s["source"] for s in config["services"][name]["secrets"]}
        password = Path(config["secrets"][secret_name]["file"]).read_text().rstrip("\n")
        assert hashlib.sha256(password.encode()).hexdigest() == hashes[user], name
    # The producer's container holds no other user's password.
    assert [s["source"] for s in config["services"]["api"]["secrets"]] == ["redis_producer_password"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # the default user may PING only


def test_services_run_the_project_image_against_redis(config: dict[str, Any]) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'boilerhouse = "services.cli:main"' in pyproject
    for name, sub in (("api", "api"), ("aggregator", "aggregator")):
        service = config["services"][name]
        assert Path(service["build"]["context"]).resolve() == REPO.resolve()
        assert (REPO / service["build"].get("dockerfile", "Dockerfile")).is_file()
        assert service["command"][:2] == ["boilerhouse", sub]
        assert service["environment"]["BOILERHOUSE_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_prometheus_scrapes_the_aggregator_with_the_rules(config: dict[str, Any]) -> None:
    agg = config["services"]["aggregator"]
    port = agg["command"][agg["command"].index("--port") + 1]
    assert agg["environment"]["BOILERHOUSE_METRICS_HOST"] == "0.0.0.0"
    prom_config = yaml.safe_load(PROMETHEUS_YML.read_text())
    job = next(j for j in prom_config["scrape_configs"] if j["job_name"] == AGGREGATOR_JOB)
    assert job["static_configs"][0]["targets"] == [f"aggregator:{port}"]
    prom = config["services"]["prometheus"]
    mounts = {v["target"]: v for v in prom["volumes"]}
    etc = Path(mounts["/etc/prometheus"]["source"])
    assert etc.resolve() == (REPO / "deploy" / "prometheus").resolve()
    flags = prom["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in flags
    assert "--enable-feature=exemplar-storage" in flags, "the latency panels show exemplars"
    # The rule files the config names are inside the mounted directory.
    for rule_file in prom_config["rule_files"]:
        assert (etc / rule_file).is_file(), rule_file
    assert prom["image"].startswith("prom/prometheus:v2.42")


def test_grafana_is_provisioned(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]).resolve() for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/grafana/provisioning"] == (REPO / "deploy" / "grafana" / "provisioning").resolve()
    assert (mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").is_file()
    assert (mounts["/etc/grafana/provisioning"] / "dashboards" / "boilerhouse.yml").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards = mounts["/var/lib/grafana/dashboards"]
    assert (dashboards / Path(home).relative_to("/var/lib/grafana/dashboards")).is_file()


def test_every_mounted_file_exists(config: dict[str, Any]) -> None:
    binds = [
        (name, v)
        for name, s in config["services"].items()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    ]
    assert binds, "compose.yaml mounts nothing from the repository?"
    for name, volume in binds:
        source = Path(volume["source"]).resolve()
        assert source.exists(), f"{name}: {source} does not exist"
        assert source.is_relative_to(REPO.resolve()), f"{name}: {source} is outside the repository"
        assert volume.get("read_only") is True, f"{name}: configuration should be mounted read-only"


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(Path(path).match(p) or path.split("/", maxsplit=1)[0] == p for p in patterns)


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            assert not _dockerignored(source), f"{source} is excluded by .dockerignore"
    for unwanted in (".venv", ".git", "tests"):
        assert _dockerignored(unwanted)
    assert any(line.startswith("USER ") and "root" not in line for line in lines), "run as a non-root user"
    assert "rclone" in (REPO / "Dockerfile").read_text(), "the sync coordinator needs rclone in the image"


def test_operations_guide_documents_every_setting() -> None:
    """Every BOILERHOUSE_* variable either service reads is in docs/operations.md."""
    docs = (REPO / "docs" / "operations.md").read_text()
    sources = [
        REPO / "services" / "aggregator" / "settings.py",
        REPO / "services" / "api" / "settings.py",
        REPO / "services" / "cli.py",
        REPO / "shared" / "events" / "bus.py",
    ]
    variables = {v for path in sources for v in re.findall(r'"(BOILERHOUSE_[A-Z_]+)"', path.read_text())}
    variables |= {f"{v}_FILE" for v in SECRET_VARIABLES}
    assert len(variables) > 20
    missing = sorted(v for v in variables if f"`{v}`" not in docs)
    assert not missing, f"not in docs/operations.md: {missing}"


def test_compose_environment_names_are_real_settings(config: dict[str, Any]) -> None:
    """A misspelt variable in compose.yaml would be silently ignored: every one must be read somewhere."""
    read = set()
    for path in [*(REPO / "services").rglob("*.py"), *(REPO / "shared").rglob("*.py")]:
        read |= set(re.findall(r'"(BOILERHOUSE_[A-Z_]+)"', path.read_text()))
    read |= {f"{v}_FILE" for v in SECRET_VARIABLES}
    used = {
        name
        for s in config["services"].values()
        for name in s.get("environment", {})
        if name.startswith("BOILERHOUSE_")
    }
    assert used, "compose.yaml configures no service?"
    assert used <= read, f"not read by any service: {sorted(used - read)}"


def _copy_context(dest: Path) -> None:
    """Lay out what the Dockerfile's COPY lines take from the build context, minus .dockerignore."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, _target = shlex.split(line)[1:]
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, dest / source, ignore=ignore)
            else:
                shutil.copy2(REPO / source, dest / source)


def test_image_context_builds_installs_and_runs(tmp_path: Path) -> None:
    """`pip install .` on exactly what the image gets works, and the installed command runs from it."""
    context, site = tmp_path / "context", tmp_path / "site"
    context.mkdir()
    _copy_context(context)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "services" / "api" / "workloads" / "echo.yaml").is_file(), "workload examples not packaged"
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import services, shared; print(services.__file__); print(shared.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(Path(p).is_relative_to(site) for p in probe.stdout.split()), probe.stdout
    for sub in ("api", "aggregator"):
        helped = subprocess.run(
            [sys.executable, "-m", "services.cli", sub, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert helped.returncode == 0 and "--port" in helped.stdout, helped.stderr
