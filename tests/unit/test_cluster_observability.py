"""The observability deployment files parse, agree with each other, and the dashboard queries only
metrics that services/common/metrics.py defines (as Ray exports them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services.common import metrics

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "cluster" / "observability"
DASHBOARD = OBS / "grafana" / "parley-dashboard.json"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or variables)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                                # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                               # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # grouping
    names = set()
    for match in re.finditer(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in _KEYWORDS:
            continue  # a function or aggregation call, or a keyword
        names.add(match.group())
    return names


def _load_yaml(name: str):
    with open(OBS / name) as f:
        return list(yaml.safe_load_all(f))


def _dashboard_targets() -> list[tuple[str, dict]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend((inner["title"], target) for target in inner.get("targets", []))
    return found


# -- every file parses ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(OBS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(OBS)))
def test_every_yaml_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


def test_dashboard_json_parses_with_unique_ids_and_no_overlaps():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = {}
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
    # Every query goes to the data source picked in the dashboard's variable.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for title, target in _dashboard_targets():
        assert target["datasource"]["uid"] == "${datasource}", title


# -- the dashboard queries only what Parley exports -----------------------------------------------

def test_promql_parser_finds_metric_names():
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, stage) (rate(ray_x_bucket{stage="a b"}[$__rate_interval])))'
    ) == {"ray_x_bucket"}
    assert metric_names("sum(rate(a_total[5m] offset 1h)) / clamp_min(sum(rate(b_total[5m])), 1e-9)") \
        == {"a_total", "b_total"}
    assert metric_names("sum without (WorkerId) (g) > bool 2") == {"g"}


def test_dashboard_queries_only_metrics_defined_in_services_common_metrics():
    targets = _dashboard_targets()
    assert targets
    used = set()
    for title, target in targets:
        names = metric_names(target["expr"])
        assert names, f"{title}: no metric in {target['expr']!r}"
        unknown = names - metrics.EXPORTED_SERIES
        assert not unknown, f"{title}: {sorted(unknown)} not exported by services/common/metrics.py"
        used |= names
        if "histogram_quantile" in target["expr"]:
            assert all(n.endswith("_bucket") for n in names), title
            assert re.search(r"by\s*\([^)]*\ble\b", target["expr"]), f"{title}: quantile without `by (le)`"
    # ... and shows every metric Parley exports.
    wanted = {s.exported_series[0] for s in metrics.SPECS}
    assert wanted <= used, f"not on the dashboard: {sorted(wanted - used)}"


def test_docs_name_only_exported_metrics():
    text = (ROOT / "docs" / "observability.md").read_text()
    named = set(re.findall(r"\bray_parley_[a-z0-9_]+", text))
    assert named and named <= metrics.EXPORTED_SERIES, sorted(named - metrics.EXPORTED_SERIES)


# -- the collector, Jaeger, compose and Prometheus configs ---------------------------------------

def test_collector_pipelines_reference_defined_components():
    [config] = _load_yaml("otel-collector.yaml")
    service = config["service"]
    assert set(service.get("extensions", [])) <= set(config.get("extensions", {}))
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in service["pipelines"].items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for kind in used:
            declared = set(config.get(kind) or {})
            listed = pipeline.get(kind, [])
            assert set(listed) <= declared, f"pipeline {name}: {sorted(set(listed) - declared)} not defined in {kind}"
            used[kind] |= set(listed)
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter" and processors[-1] == "batch", name
    for kind, names in used.items():
        assert set(config.get(kind) or {}) == names, f"defined but unused {kind}"
    traces = service["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    [exporter] = traces["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"


def test_jaeger_manifest_is_a_deployment_and_service_with_otlp_and_ui():
    docs = {d["kind"]: d for d in _load_yaml("jaeger.yaml")}
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert re.fullmatch(r"jaegertracing/all-in-one:\d+\.\d+\.\d+", container["image"])
    assert {e["name"]: e["value"] for e in container["env"]}["COLLECTOR_OTLP_ENABLED"] == "true"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {ports["otlp-grpc"], ports["otlp-http"], ports["ui"]} == {4317, 4318, 16686}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["port"] for p in service["spec"]["ports"]} == {4317, 4318, 16686}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports


def test_compose_pins_images_mounts_existing_files_and_matches_the_manifest():
    [compose] = _load_yaml("docker-compose.yaml")
    services = compose["services"]
    assert {"jaeger", "otel-collector", "prometheus", "grafana"} <= set(services)
    assert services["otel-collector"]["profiles"] == ["collector"]  # optional
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (OBS / source).exists(), f"{name}: {source} missing"
    deployment = {d["kind"]: d for d in _load_yaml("jaeger.yaml")}["Deployment"]
    [k8s_container] = deployment["spec"]["template"]["spec"]["containers"]
    assert services["jaeger"]["image"] == k8s_container["image"]
    published = {p.split(":")[-1] for p in services["jaeger"]["ports"]}
    assert {"4317", "4318", "16686"} <= published
    # The collector forwards to Jaeger by its compose service name.
    assert "jaeger" in services["otel-collector"]["depends_on"]


def test_prometheus_scrapes_ray_metrics_endpoints():
    [config] = _load_yaml("prometheus.yaml")
    jobs = config["scrape_configs"]
    assert len({j["job_name"] for j in jobs}) == len(jobs)
    ray_job = next(j for j in jobs if j["job_name"] == "ray")
    assert ray_job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in ray_job["static_configs"] for t in sc["targets"]]
    assert targets and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)


def test_grafana_provisioning_points_at_the_compose_services():
    [datasources] = _load_yaml("grafana/provisioning/datasources/parley.yaml")
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    [dashboards] = _load_yaml("grafana/provisioning/dashboards/parley.yaml")
    [compose] = _load_yaml("docker-compose.yaml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("."))
    assert Path(mounts["./grafana/parley-dashboard.json"]).parent == Path(dashboards["providers"][0]["options"]["path"])
