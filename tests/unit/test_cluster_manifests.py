"""The deployment manifests under cluster/ parse, agree with serve_config.yaml and with the
schemas that will read them (Ray Serve's, the Ray cluster launcher's), the GPU packing plans never
oversubscribe a GPU, and the images install only extras that exist."""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.packing import PackingPlan, apply_plan, config_problems, load_plans

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGES = CLUSTER / "images"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
LAUNCHER = CLUSTER / "launcher" / "parley-cluster.yaml"
MANIFESTS = [RAYSERVICE, LAUNCHER, CLUSTER / "gpu-plans.yaml"]

sys.path.insert(0, str(ROOT / "scripts"))
import check_deployable  # noqa: E402
import render_rayservice  # noqa: E402


def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def rayservice() -> dict:
    return next(d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d and d["kind"] == "RayService")


def embedded_config() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


# -- RayService ----------------------------------------------------------------------------------

def test_rayservice_embeds_serve_config_and_has_not_drifted():
    assert embedded_config() == serve_config()
    # Byte for byte what the render script writes: editing either file alone fails here.
    assert render_rayservice.render() == RAYSERVICE.read_text()


def test_embedding_replaces_only_the_block():
    manifest = "spec:\n  serveConfigV2: |\n    old: 1\n\n    more: 2\n  rayClusterConfig:\n    x: 1\n"
    out = render_rayservice.embed(manifest, "# new\na:\n  b: 2\n")
    assert yaml.safe_load(out) == {"spec": {"serveConfigV2": "# new\na:\n  b: 2\n", "rayClusterConfig": {"x": 1}}}
    with pytest.raises(ValueError, match="serveConfigV2"):
        render_rayservice.embed("spec: {}\n", "a: 1\n")


def test_embedded_config_passes_serve_schema():
    ServeDeploySchema.model_validate(embedded_config())
    broken = embedded_config()
    broken["applications"][0]["deployments"][0]["max_ongoing_requests"] = 0
    with pytest.raises(ValueError):
        ServeDeploySchema.model_validate(broken)


def _groups() -> dict[str, dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return {group["groupName"]: group for group in cluster["workerGroupSpecs"]}


def _gpus(group: dict) -> int:
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in group["template"]["spec"]["containers"])


def test_rayservice_autoscales_a_gpu_group_and_a_cpu_group_for_the_edge():
    spec = rayservice()
    assert spec["apiVersion"] == "ray.io/v1"
    cluster = spec["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == __import__("ray").__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    groups = _groups()
    gpu = [g for g in groups.values() if _gpus(g) > 0]
    cpu = [g for g in groups.values() if _gpus(g) == 0]
    assert gpu and cpu
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"]  # room for the autoscaler


def test_pods_outlive_the_graceful_shutdown_of_the_replicas_they_hold():
    """A replaced pod must let its live calls end: its grace period exceeds the longest
    graceful_shutdown_timeout_s of any deployment that can land on it."""
    longest_gpu = longest_cpu = 0
    for app in serve_config()["applications"]:
        for deployment in app["deployments"]:
            timeout = deployment.get("graceful_shutdown_timeout_s", 20)
            if deployment["ray_actor_options"].get("num_gpus"):
                longest_gpu = max(longest_gpu, timeout)
            else:
                longest_cpu = max(longest_cpu, timeout)
    for name, group in _groups().items():
        longest = longest_gpu if _gpus(group) else longest_cpu
        assert group["template"]["spec"].get("terminationGracePeriodSeconds", 30) > longest, name


def _image_names() -> set[str]:
    return {f"parley-{path.name.removesuffix('.Dockerfile')}" for path in IMAGES.glob("*.Dockerfile")}


def test_manifests_use_only_images_built_here():
    images = set(re.findall(r"image:\s*(\S+)", RAYSERVICE.read_text()))
    images |= set(re.findall(r"(?:image|worker_image):\s*(\S+)", LAUNCHER.read_text()))
    assert images
    for image in images:
        assert image.split(":")[0] in _image_names(), image
    # Every GPU pod runs an image with vLLM: the llm application may land on any of them.
    for group in _groups().values():
        if _gpus(group):
            image = group["template"]["spec"]["containers"][0]["image"]
            assert "llm-vllm" in check_deployable.image_extras(image), image


# -- Ray cluster launcher ---------------------------------------------------------------------------

def test_launcher_config_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] > t["min_workers"] for t in types.values())
    assert any("GPU" not in t["resources"] and t["max_workers"] > 0 for t in types.values())
    broken = copy.deepcopy(config)
    next(t for t in broken["available_node_types"].values() if "GPU" in t["resources"])["resources"]["GPU"] = 0.5
    with pytest.raises(Exception, match="integer"):
        validate_config(prepare_config(broken))


# -- GPU packing plans ------------------------------------------------------------------------------

def test_every_plan_fits_its_gpu():
    plans = load_plans()
    assert {"l4", "h100", "h200"} <= set(plans)
    for plan in plans.values():
        assert plan.problems() == []


def test_serve_config_carries_the_h100_plan_within_each_engines_cap():
    config, plan = serve_config(), load_plans()["h100"]
    assert config_problems(config, plan) == []
    assert apply_plan(config, plan) == config


@pytest.mark.parametrize("name", ["l4", "h100", "h200"])
def test_each_plan_renders_a_valid_serve_config(name):
    plan = load_plans()[name]
    config = apply_plan(serve_config(), plan)
    ServeDeploySchema.model_validate(config)
    assert config_problems(config, plan) == []
    llm = next(app for app in config["applications"] if app["name"] == "llm")
    assert llm["args"]["engine"]["gpu_memory_utilization"] == plan.stages["llm"].gpu_memory_utilization
    assert llm["deployments"][0]["ray_actor_options"]["num_gpus"] == plan.stages["llm"].num_gpus


def test_render_script_renders_a_manifest_for_another_plan():
    plan = load_plans()["h200"]
    manifest = next(yaml.safe_load_all(render_rayservice.render("h200")))
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == apply_plan(serve_config(), plan)
    assert manifest["spec"]["rayClusterConfig"] == rayservice()["spec"]["rayClusterConfig"]
    with pytest.raises(SystemExit, match="unknown plan"):
        render_rayservice.render("a100")


def test_plan_checks_catch_oversubscription_and_loose_caps():
    h100 = load_plans()["h100"].model_dump()
    crowded = copy.deepcopy(h100)
    crowded["gpus"]["gpu"]["llm"] = 2
    assert any("group gpu: shares add up to 1.40" in p for p in PackingPlan.model_validate(crowded).problems())
    unplaced = copy.deepcopy(h100)
    del unplaced["gpus"]["moshi"]
    assert any("moshi has a share but no GPU holds it" in p for p in PackingPlan.model_validate(unplaced).problems())
    loose = copy.deepcopy(h100)
    loose["stages"]["llm"]["gpu_memory_utilization"] = 0.7
    assert any("exceeds its share" in p for p in PackingPlan.model_validate(loose).problems())
    big = copy.deepcopy(h100)
    big["stages"]["asr"]["expected_gb"] = 9.0  # 0.10 of 80 GB is 8 GB
    assert any("asr needs ~9.0 GB" in p for p in PackingPlan.model_validate(big).problems())
    with pytest.raises(ValueError, match="expected_gb"):
        PackingPlan.model_validate({**h100, "stages": {"asr": {"num_gpus": 0.1, "engine_cap": "none"}}})
    # A serve config whose vLLM may take more than its Ray share, or whose share differs from the plan.
    config = serve_config()
    llm = next(app for app in config["applications"] if app["name"] == "llm")
    llm["args"]["engine"]["gpu_memory_utilization"] = 0.65
    llm["deployments"][0]["ray_actor_options"]["num_gpus"] = 0.5
    problems = config_problems(config, load_plans()["h100"])
    assert any("not within its share 0.5" in p for p in problems)
    assert any("num_gpus 0.5 but the plan says 0.6" in p for p in problems)


def test_gpu_packing_doc_lists_every_plan():
    doc = (ROOT / "docs" / "gpu-packing.md").read_text()
    for name, plan in load_plans().items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"docs/gpu-packing.md has no table row for the {name} plan"
        for stage in ("asr", "llm", "tts", "moshi"):
            share = plan.stages[stage]
            assert f"{share.num_gpus:.2f}" in row, (name, stage)
            if share.gpu_memory_utilization is not None:
                assert f"{share.gpu_memory_utilization:.2f}" in row, (name, stage)
            if share.slots is not None:
                assert f"{share.slots} slots" in row, (name, stage)


# -- container images -------------------------------------------------------------------------------

def _dockerfiles() -> list[Path]:
    return sorted(IMAGES.glob("*.Dockerfile"))


def test_images_exist_for_each_stage_group():
    assert {"parley-base", "parley-llm", "parley-moshi"} <= _image_names()


@pytest.mark.parametrize("path", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_installs_only_extras_that_exist(path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    text = path.read_text()
    used = {extra.strip() for group in re.findall(r"\"\.\[([^\]]+)\]\"", text) for extra in group.split(",")}
    assert used, "installs Parley with no extra"
    assert used <= extras, used - extras
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for name in source.split():
            assert (ROOT / name).exists(), name
    parent = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    if parent:
        assert parent.group(1).split(":")[0] in _image_names()


def test_images_pin_what_make_setup_pins():
    makefile = (ROOT / "Makefile").read_text()
    moshi_pin = re.search(r'--no-deps "(moshi==[\d.]+)"', makefile).group(1)
    assert f'"{moshi_pin}"' in (IMAGES / "moshi.Dockerfile").read_text()
    torch_pin = re.search(r"^TORCH\s+\?=\s+(\S+)", makefile, re.M).group(1)
    assert f"ARG TORCH_SPEC={torch_pin}" in (IMAGES / "base.Dockerfile").read_text()
