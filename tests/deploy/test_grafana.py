"""The Grafana dashboard (JSON kept under test) and its provisioning files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.aggregator.metrics import METRICS, Kind
from tests.deploy.queries import (
    PAIR_SAFE,
    REPO,
    SEED_EQUIVALENTS,
    all_queries,
    dashboard,
    dashboard_queries,
    metric_names,
)

GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "boilerhouse.yml"

#: The seed's "Grafana Dashboard" section: row -> (panel title, panel type) in order.
SEED_ROWS: dict[str, list[tuple[str, str]]] = {
    "Overview": [
        ("Total pools", "stat"),
        ("Total containers", "stat"),
        ("Active containers", "stat"),
        ("Idle containers", "stat"),
        ("Overall utilization", "gauge"),
    ],
    "Pool details": [
        ("Pool size by pool", "timeseries"),
        ("Pool utilization by pool", "timeseries"),
        ("Container acquisition latency", "timeseries"),
    ],
    "Sync operations": [
        ("Sync operations per minute by direction", "timeseries"),
        ("Sync duration", "heatmap"),
        ("Sync errors by type", "timeseries"),
        ("Bytes transferred", "timeseries"),
    ],
    "API performance": [
        ("Request rate by endpoint", "timeseries"),
        ("Request latency", "heatmap"),
        ("Error rate by endpoint", "timeseries"),
    ],
}


def known_series_names(prefix: str = "boilerhouse_") -> set[str]:
    """Sample names the aggregator can expose, from the one mapping module (plus Prometheus' ``up``)."""
    names = {"up"}
    for m in METRICS:
        names.add(prefix + m.name)
        if m.kind is Kind.HISTOGRAM:
            names |= {f"{prefix}{m.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


def rows() -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    current = None
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            out[current] = []
        else:
            assert current is not None, f"panel {panel['title']!r} is above the first row"
            out[current].append(panel)
    return out


def test_seed_rows_and_panels_in_order() -> None:
    layout = rows()
    assert list(layout)[:4] == list(SEED_ROWS)
    for row, wanted in SEED_ROWS.items():
        have = [(p["title"], p["type"]) for p in layout[row]]
        positions = [have.index(w) for w in wanted]  # ValueError names a missing panel
        assert positions == sorted(positions), f"{row}: panels out of the seed's order"


def test_latency_panel_has_p50_p95_p99() -> None:
    panel = next(p for p in dashboard()["panels"] if p["title"] == "Container acquisition latency")
    quantiles = [re.search(r"histogram_quantile\(([\d.]+),", t["expr"]).group(1) for t in panel["targets"]]
    assert quantiles == ["0.5", "0.95", "0.99"]


def test_every_seed_equivalent_is_on_the_dashboard() -> None:
    # As the seed wrote it, or in its pair-safe form (the same value for one deployment).
    shipped = set(dashboard_queries().values())
    shipped |= {PAIR_SAFE[q] for q in shipped if q in PAIR_SAFE}
    unmatched = {k: q for k, q in SEED_EQUIVALENTS.items() if q not in shipped}
    # Per-pool utilization is shown by pool (summed over shards); the seed's raw ratio is covered below.
    assert set(unmatched) == {"Pool Utilization %"}


def test_panels_are_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] == "boilerhouse-metrics" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == datasource_uid, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == datasource_uid
            assert "$" not in t["expr"], "queries must run as-is in Prometheus (they are tested there)"
        if p["type"] == "heatmap":
            assert all(t.get("format") == "heatmap" for t in p["targets"])
            assert all("_bucket[" in t["expr"] and "by (le)" in t["expr"] for t in p["targets"])


def test_latency_histogram_panels_show_exemplars() -> None:
    """Every graph of a latency histogram (a timeseries or heatmap over a ``_duration_seconds_bucket``)
    asks for exemplars; nothing else does (stat panels cannot show them, other metrics have none)."""
    latency = []
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            graph = p["type"] in ("timeseries", "heatmap") and "_duration_seconds_bucket[" in t["expr"]
            assert t.get("exemplar", False) is graph, (p["title"], t["expr"])
            if graph:
                latency.append(p["title"])
    assert {
        "Container acquisition latency",
        "Sync duration",
        "Sync duration p95 by workload",
        "Request latency",
        "Request latency p95 by endpoint",
    } == set(latency)


def test_every_metric_name_in_dashboards_and_alerts_is_in_the_mapping() -> None:
    known = known_series_names()
    for where, expr in all_queries().items():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= known, f"{where}: {sorted(names - known)} not in services/aggregator/metrics.py"


def test_metric_name_parser() -> None:
    assert metric_names('sum by (le, pool_id) (rate(a_bucket{x="y{z}"}[5m] offset 1m)) / on (pool_id) b') == {
        "a_bucket",
        "b",
    }
    assert metric_names("max_over_time(c[10m]) - c > 0 or absent(d) unless e offset 5m") == {"c", "d", "e"}
    assert metric_names('count(f) * 100 + sum without (instance) (g{le="+Inf"}) > bool 1e3') == {"f", "g"}


def test_provisioning_files() -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    providers = yaml.safe_load(PROVIDERS.read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
    # The provider's path is where compose.yaml mounts the dashboards directory.
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
