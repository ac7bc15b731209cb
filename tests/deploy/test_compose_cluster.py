"""deploy/compose-cluster.yaml (a Redis Cluster, two producers, an HA pair of sharded aggregators),
validated by the real Compose v2 (`docker compose config`, no engine), its Prometheus configuration by
promtool, and its redis-server arguments by a real redis-server."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from services.embedded import stop_pid, wait_for_port
from shared.events.bus import seed_urls
from tests.deploy.queries import REPO
from tests.support.cluster import free_cluster_port, release_port
from tests.support.compose import compose_config
from tests.support.prometheus import AGGREGATOR_JOB, tool

COMPOSE = REPO / "deploy" / "compose-cluster.yaml"
PROMETHEUS_CLUSTER_YML = REPO / "deploy" / "prometheus" / "prometheus-cluster.yml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config(COMPOSE)


def _named(config: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if name.startswith(prefix)}


def test_every_long_running_service_has_a_health_check_and_loopback_ports(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name != "cluster-init":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_six_cluster_nodes_joined_as_three_masters_with_a_replica_each(config: dict[str, Any]) -> None:
    nodes = _named(config, "redis-")
    assert len(nodes) == 6
    for name, node in nodes.items():
        assert node["hostname"] == name  # announced to clients, resolvable in the network
        command = " ".join(node["command"])
        for flag in (
            "--cluster-enabled yes",
            "--appendonly yes",
            "--cluster-preferred-endpoint-type hostname",
        ):
            assert flag in command, (name, flag)
        assert any(v["target"] == "/data" and v["type"] == "volume" for v in node["volumes"])
    init = config["services"]["cluster-init"]
    script = "\n".join(init["command"])
    assert "--cluster-create" not in script and "redis-cli --cluster create" in script
    assert "--cluster-replicas 1" in script
    assert set(re.findall(r"redis-\d", script.split("for n in", 1)[1].split(";", 1)[0])) == set(nodes)
    for node in nodes:
        assert init["depends_on"][node]["condition"] == "service_healthy"


def test_every_component_uses_the_cluster_with_the_same_partitions(config: dict[str, Any]) -> None:
    nodes = set(_named(config, "redis-"))
    apps = {**_named(config, "api-"), **_named(config, "aggregator-")}
    assert len(_named(config, "api-")) >= 2
    partitions = set()
    for name, service in apps.items():
        env = service["environment"]
        seeds = seed_urls(env["BOILERHOUSE_REDIS_URL"])
        assert len(seeds) >= 3, name
        assert {urlsplit(s).hostname for s in seeds} <= nodes, name
        partitions.add(env["BOILERHOUSE_PARTITIONS"])
        assert service["depends_on"]["cluster-init"]["condition"] == "service_completed_successfully"
        assert Path(service["build"]["context"]).resolve() == REPO.resolve()
    assert len(partitions) == 1, "producers and aggregators must agree on the partition count"


def test_two_consumer_groups_each_with_every_shard(config: dict[str, Any]) -> None:
    groups: dict[str, dict[int, int]] = {}
    for service in _named(config, "aggregator-").values():
        env = service["environment"]
        assert env["BOILERHOUSE_METRICS_HOST"] == "0.0.0.0"
        shards = groups.setdefault(env["BOILERHOUSE_CONSUMER_GROUP"], {})
        shards[int(env["BOILERHOUSE_AGGREGATOR_SHARD"])] = int(env["BOILERHOUSE_AGGREGATOR_SHARDS"])
        p = int(env["BOILERHOUSE_PARTITIONS"])
    assert len(groups) >= 2, "an HA pair is two consumer groups"
    for group, shards in groups.items():
        (n,) = set(shards.values())
        assert sorted(shards) == list(range(n)), group
        assert p >= n, f"{group}: a shard would have no partition"


def test_prometheus_scrapes_every_aggregator_with_its_consumer_group(config: dict[str, Any]) -> None:
    prom = config["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus-cluster.yml" in prom["command"]
    mounts = {v["target"]: v for v in prom["volumes"]}
    assert Path(mounts["/etc/prometheus"]["source"]).resolve() == PROMETHEUS_CLUSTER_YML.parent.resolve()
    job = next(
        j
        for j in yaml.safe_load(PROMETHEUS_CLUSTER_YML.read_text())["scrape_configs"]
        if j["job_name"] == AGGREGATOR_JOB
    )
    scraped = {t: sc["labels"]["consumer_group"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{name}:{s['command'][s['command'].index('--port') + 1]}": s["environment"][
            "BOILERHOUSE_CONSUMER_GROUP"
        ]
        for name, s in _named(config, "aggregator-").items()
    }
    assert scraped == expected
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(PROMETHEUS_CLUSTER_YML)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_mounted_file_exists_and_is_read_only(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
                assert volume.get("read_only") is True, name


def test_environment_names_are_real_settings(config: dict[str, Any]) -> None:
    read = set()
    for path in (REPO / "services").rglob("*.py"):
        read |= set(re.findall(r'"(BOILERHOUSE_[A-Z_]+)"', path.read_text()))
    used = {
        n
        for s in config["services"].values()
        for n in s.get("environment", {})
        if n.startswith("BOILERHOUSE_")
    }
    assert used and used <= read, sorted(used - read)


def test_the_node_command_starts_a_real_cluster_node(config: dict[str, Any], tmp_path: Path) -> None:
    """The redis-server arguments of the nodes, as Compose passes them, run on the real binary."""
    node = config["services"]["redis-1"]
    assert node["command"][:2] == ["sh", "-c"]
    args = shlex.split(
        node["command"][2].replace("$$(hostname)", "redis-1").replace("/data/", f"{tmp_path}/")
    )
    assert args[:2] == ["exec", "redis-server"]
    port = free_cluster_port()  # its cluster bus listens on port + 10000
    pidfile = tmp_path / "redis.pid"
    proc = subprocess.Popen(
        [
            tool("redis-server"),
            *args[2:],
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--pidfile",
            str(pidfile),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=10)
        client = redis.Redis(port=port, decode_responses=True)
        assert client.info("cluster")["cluster_enabled"] == 1
        assert client.config_get("cluster-preferred-endpoint-type") == {
            "cluster-preferred-endpoint-type": "hostname"
        }
        assert client.config_get("cluster-announce-hostname") == {"cluster-announce-hostname": "redis-1"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        stop_pid(proc.pid, timeout=10)
        proc.wait(5)
        release_port(port)
