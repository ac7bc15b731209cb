"""Every PromQL query the project ships (seed table, dashboard, alerts) and the metric names each one uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_JSON = REPO / "deploy" / "grafana" / "dashboards" / "boilerhouse.json"
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"

#: The seed's "Dashboard Metric Equivalents" table, made valid: the quantile needs rate(..._bucket[...]).
SEED_EQUIVALENTS: dict[str, str] = {
    "Total Pools": "count(boilerhouse_pool_size)",
    "Total Containers": "sum(boilerhouse_pool_size)",
    "Active Containers": "sum(boilerhouse_pool_borrowed)",
    "Idle Containers": "sum(boilerhouse_pool_available)",
    "Pool Utilization %": "boilerhouse_pool_borrowed / boilerhouse_pool_size * 100",
    "Sync Running Count": "sum(boilerhouse_sync_concurrent_operations)",
    "Sync Error Count": "sum(increase(boilerhouse_sync_errors_total[1h]))",
    "Avg Acquire Time": "histogram_quantile(0.5, sum by (le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))",
    "Request Rate": "sum(rate(boilerhouse_http_requests_total[5m]))",
    "Error Rate": 'sum(rate(boilerhouse_http_requests_total{status=~"5.."}[5m]))',
}


#: The dashboard's queries, pair-safe (summed per consumer group, then the largest group: see
#: docs/operations.md), and the plain query each one equals for one deployment (whose expectation applies).
PAIR_SAFE: dict[str, str] = {
    "max(count by (consumer_group) (sum by (pool_id, workload_id, consumer_group) (boilerhouse_pool_size)))": "count(boilerhouse_pool_size)",
    "max(sum by (consumer_group) (boilerhouse_pool_size))": "sum(boilerhouse_pool_size)",
    "max(sum by (consumer_group) (boilerhouse_pool_borrowed))": "sum(boilerhouse_pool_borrowed)",
    "max(sum by (consumer_group) (boilerhouse_pool_available))": "sum(boilerhouse_pool_available)",
    "max(sum by (consumer_group) (boilerhouse_sync_concurrent_operations))": "sum(boilerhouse_sync_concurrent_operations)",
    "max(sum by (consumer_group) (increase(boilerhouse_sync_errors_total[1h])))": "sum(increase(boilerhouse_sync_errors_total[1h]))",
    "max(sum by (consumer_group) (boilerhouse_pool_borrowed) / sum by (consumer_group) (boilerhouse_pool_size)) * 100": "sum(boilerhouse_pool_borrowed) / sum(boilerhouse_pool_size) * 100",
    "max (histogram_quantile(0.5, sum by (le, consumer_group) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m]))))": "histogram_quantile(0.5, sum by (le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))",
    "max(sum by (consumer_group) (rate(boilerhouse_http_requests_total[5m])))": "sum(rate(boilerhouse_http_requests_total[5m]))",
    'max(sum by (consumer_group) (rate(boilerhouse_http_requests_total{status=~"5.."}[5m])))': 'sum(rate(boilerhouse_http_requests_total{status=~"5.."}[5m]))',
    "max by (pool_id) (sum by (pool_id, consumer_group) (boilerhouse_pool_size))": "sum by (pool_id) (boilerhouse_pool_size)",
    "max by (pool_id) (sum by (pool_id, consumer_group) (boilerhouse_pool_borrowed) / sum by (pool_id, consumer_group) (boilerhouse_pool_size)) * 100": "sum by (pool_id) (boilerhouse_pool_borrowed) / sum by (pool_id) (boilerhouse_pool_size) * 100",
    "max by (pool_id) (histogram_quantile(0.5, sum by (pool_id, le, consumer_group) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m]))))": "histogram_quantile(0.5, sum by (pool_id, le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))",
    "max by (pool_id) (histogram_quantile(0.95, sum by (pool_id, le, consumer_group) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m]))))": "histogram_quantile(0.95, sum by (pool_id, le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))",
    "max by (pool_id) (histogram_quantile(0.99, sum by (pool_id, le, consumer_group) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m]))))": "histogram_quantile(0.99, sum by (pool_id, le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))",
    "max by (direction) (sum by (direction, consumer_group) (rate(boilerhouse_sync_operations_total[5m]))) * 60": "sum by (direction) (rate(boilerhouse_sync_operations_total[5m])) * 60",
    "max by (le) (sum by (le, consumer_group) (rate(boilerhouse_sync_duration_seconds_bucket[5m])))": "sum by (le) (rate(boilerhouse_sync_duration_seconds_bucket[5m]))",
    "max by (workload_id) (histogram_quantile(0.95, sum by (workload_id, le, consumer_group) (rate(boilerhouse_sync_duration_seconds_bucket[5m]))))": "histogram_quantile(0.95, sum by (workload_id, le) (rate(boilerhouse_sync_duration_seconds_bucket[5m])))",
    "max by (error_type) (sum by (error_type, consumer_group) (rate(boilerhouse_sync_errors_total[5m])))": "sum by (error_type) (rate(boilerhouse_sync_errors_total[5m]))",
    "max by (direction) (sum by (direction, consumer_group) (rate(boilerhouse_sync_bytes_transferred_total[5m])))": "sum by (direction) (rate(boilerhouse_sync_bytes_transferred_total[5m]))",
    "max by (direction) (sum by (direction, consumer_group) (rate(boilerhouse_sync_files_transferred_total[5m])))": "sum by (direction) (rate(boilerhouse_sync_files_transferred_total[5m]))",
    "max by (method, path) (sum by (method, path, consumer_group) (rate(boilerhouse_http_requests_total[5m])))": "sum by (method, path) (rate(boilerhouse_http_requests_total[5m]))",
    "max by (le) (sum by (le, consumer_group) (rate(boilerhouse_http_request_duration_seconds_bucket[5m])))": "sum by (le) (rate(boilerhouse_http_request_duration_seconds_bucket[5m]))",
    "max by (path) (histogram_quantile(0.95, sum by (path, le, consumer_group) (rate(boilerhouse_http_request_duration_seconds_bucket[5m]))))": "histogram_quantile(0.95, sum by (path, le) (rate(boilerhouse_http_request_duration_seconds_bucket[5m])))",
    'max by (path) (sum by (path, consumer_group) (rate(boilerhouse_http_requests_total{status=~"5.."}[5m])))': 'sum by (path) (rate(boilerhouse_http_requests_total{status=~"5.."}[5m]))',
    "max by (reason) (sum by (reason, consumer_group) (boilerhouse_events_lost_total))": "sum by (reason) (boilerhouse_events_lost_total)",
    "max by (service) (sum by (service, consumer_group) (boilerhouse_events_dropped_total))": "sum by (service) (boilerhouse_events_dropped_total)",
    "max by (reason) (sum by (reason, consumer_group) (boilerhouse_aggregator_dead_letters_total))": "sum by (reason) (boilerhouse_aggregator_dead_letters_total)",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())  # type: ignore[no-any-return]


def dashboard_queries() -> dict[str, str]:
    """``{"panel title / refId": expr}`` for every target of every panel."""
    out: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return out


def alert_expressions() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return {
        rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"] if "alert" in rule
    }


def all_queries() -> dict[str, str]:
    """Every shipped query, keyed by where it comes from."""
    return {
        **{f"seed: {k}": v for k, v in SEED_EQUIVALENTS.items()},
        **{f"dashboard: {k}": v for k, v in dashboard_queries().items()},
        **{f"alert: {k}": v for k, v in alert_expressions().items()},
    }


_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    # aggregation operators may be followed by a grouping clause instead of "("
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, keywords and labels excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(r"\1", text)
    text = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "0", text)
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
