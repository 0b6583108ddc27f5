"""The shipped manifest: complete for the registry set, and every set's overlay gives stage
configs that Parley's own typed configs accept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from services.asr.config import ASRConfig
from services.asr.tiny import DECODING
from services.llm.config import LLMConfig
from services.models import ModelError, verify_set
from services.models.manifest import Manifest, load_manifest
from services.models.overlay import apply_set, fetch_command_for, missing_models
from services.moshi.config import MoshiConfig
from services.tts.config import TTSConfig

ROOT = Path(__file__).resolve().parents[2]
STAGE_CONFIGS = {"asr": ASRConfig, "llm": LLMConfig, "tts": TTSConfig, "moshi": MoshiConfig}


@pytest.mark.parametrize("set_name", ["cpu", "cpu-fast"])
def test_every_registry_file_has_a_pinned_hash_size_and_license(set_name):
    model_set = load_manifest().get(set_name)
    assert {spec.stage for spec in model_set.models.values()} == {"asr", "llm", "tts", "turn"}
    for name, spec in model_set.models.items():
        assert spec.license and spec.wheels, name
        for path, file in {**spec.files, **spec.inputs}.items():
            assert file.sha256 and file.size and file.parts, f"{name}/{path}"
    assert model_set.models["kokoro-82m-onnx"].engine["default_voice"] == "jf_alpha"


def test_cpu_fast_differs_from_cpu_only_in_its_asr_and_shares_the_root():
    cpu, fast = load_manifest().get("cpu"), load_manifest().get("cpu-fast")
    assert fast.root == cpu.root
    shared = {name: spec for name, spec in fast.models.items() if spec.stage != "asr"}
    assert shared == {name: spec for name, spec in cpu.models.items() if spec.stage != "asr"}
    [asr] = [name for name, spec in fast.models.items() if spec.stage == "asr"]
    assert asr == "whisper-tiny.en" and asr not in cpu.models


def test_a_set_has_one_model_per_stage():
    data = yaml.safe_load((ROOT / "services/models/manifest.yaml").read_text())
    cpu = data["sets"]["cpu"]["models"]
    cpu["whisper-tiny.en"] = data["sets"]["cpu-fast"]["models"]["whisper-tiny.en"]
    with pytest.raises(ValidationError, match=r"one model per stage.*\['asr'\]"):
        Manifest.model_validate(data)


def test_the_manifest_rejects_parts_from_unlisted_wheels():
    data = yaml.safe_load((ROOT / "services/models/manifest.yaml").read_text())
    whisper = data["sets"]["cpu"]["models"]["whisper-base"]
    whisper["files"]["model.bin"]["parts"].append({"wheel": "part3", "member": "x"})
    with pytest.raises(ValidationError, match="unknown wheels"):
        Manifest.model_validate(data)


@pytest.mark.parametrize("set_name", ["cpu", "cpu-fast", "tiny", "hub-cpu", "hub-gpu"])
def test_each_set_gives_configs_the_stages_accept(set_name):
    model_set = load_manifest().get(set_name)
    base = yaml.safe_load((ROOT / model_set.base_config).read_text())
    config = apply_set(base, set_name)
    covered = {spec.stage for spec in model_set.models.values()}
    for app in config["applications"]:
        if app["name"] in STAGE_CONFIGS:
            parsed = STAGE_CONFIGS[app["name"]].model_validate(app["args"])
            if app["name"] in covered:
                assert parsed.engine.model.startswith(model_set.root + "/"), (app["name"], parsed.engine.model)


def test_the_tiny_overlay_replaces_the_tts_kind_and_leaves_moshi():
    base = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    apps = {app["name"]: app["args"] for app in apply_set(base, "tiny")["applications"]}
    assert apps["tts"]["engine"] == {"kind": "kokoro", "model": "models/tiny/kokoro", "default_voice": "af_heart",
                                     "device": "cpu"}
    assert apps["asr"]["engine"]["model"] == "models/tiny/whisper" and apps["asr"]["engine"]["cpu_threads"] == 1
    cpu_apps = {app["name"]: app["args"] for app in base["applications"]}
    assert apps["moshi"] == cpu_apps["moshi"] and cpu_apps["tts"]["engine"]["kind"] == "kokoro_onnx"


def test_the_tiny_whisper_decodes_with_the_settings_its_builder_names():
    """Random weights with faster-whisper's defaults retry every decode: the overlay must carry
    the tiny builder's settings, and the trained set must not."""
    base = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    tiny = ASRConfig.model_validate(next(a for a in apply_set(base, "tiny")["applications"] if a["name"] == "asr")["args"])
    trained = ASRConfig.model_validate(next(a for a in base["applications"] if a["name"] == "asr")["args"])
    for key, value in DECODING.items():
        assert getattr(tiny.engine, key) == value, key
    assert any(getattr(trained.engine, key) != value for key, value in DECODING.items())


def test_missing_models_name_the_command_that_makes_them(tmp_path):
    base = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    missing = missing_models(base, tmp_path)  # an empty directory: nothing fetched
    assert "asr: models/cpu/whisper-base" in missing and "moshi: models/tiny/moshi" in missing
    assert fetch_command_for("models/cpu/whisper-base") == "parley models cpu"
    assert fetch_command_for("models/cpu/whisper-tiny.en") == "parley models cpu-fast"
    assert fetch_command_for("models/cpu/smart-turn-v3.2") == "parley models cpu"
    assert fetch_command_for("models/tiny/moshi") == "parley models tiny"
    assert fetch_command_for("models/hub-gpu/kokoro-82m") == "parley models pull gpu"


def test_an_unfetched_set_fails_verification_with_the_fix(tmp_path):
    with pytest.raises(ModelError, match=r"not a finished model .*parley models cpu --force"):
        verify_set("cpu", tmp_path)


@pytest.mark.skipif(not (ROOT / "models/cpu").exists(), reason="the cpu set is not fetched (`parley models cpu`)")
def test_the_fetched_cpu_set_verifies():
    assert verify_set("cpu", ROOT / "models/cpu", log=lambda *_: None) >= 13


def test_up_refuses_a_config_whose_models_are_missing_before_starting_ray(tmp_path, monkeypatch, capsys):
    from services.cli import main

    (tmp_path / "serve.yaml").write_text((ROOT / "serve_config.cpu.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # nothing fetched here
    assert main(["up", "--config", "serve.yaml", "--gcs-port", "6998", "--dashboard-port", "8998"]) == 1
    error = capsys.readouterr().err
    assert "models/cpu/whisper-base" in error and "run `parley models cpu` and `parley models tiny`" in error
    assert main(["up", "--config", "serve.yaml", "--models", "tiny", "--gcs-port", "6998",
                 "--dashboard-port", "8998"]) == 1
    assert "run `parley models tiny`" in capsys.readouterr().err
    assert (tmp_path / "out" / "serve_config.tiny.yaml").exists()


def test_the_cpu_overlay_gives_the_edge_the_smart_turn_model():
    from services.edge.config import EdgeConfig

    base = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    shipped = {app["name"]: app["args"] for app in base["applications"]}  # `serve deploy` as it is
    assert EdgeConfig.model_validate(shipped["edge"]).turn_taking.end_of_turn.kind == "smart_turn"
    apps = {app["name"]: app["args"] for app in apply_set(base, "cpu")["applications"]}
    edge = EdgeConfig.model_validate(apps["edge"])
    assert edge.turn_taking.end_of_turn.kind == "smart_turn"
    assert edge.turn_taking.end_of_turn.model == "models/cpu/smart-turn-v3.2"
    tiny = {app["name"]: app["args"] for app in apply_set(base, "tiny")["applications"]}
    assert EdgeConfig.model_validate(tiny["edge"]).turn_taking.end_of_turn.kind == "silence"
    assert "edge: models/cpu/smart-turn-v3.2" in missing_models(apply_set(base, "cpu"), ROOT / "nowhere")
