"""`parley models pull cpu|gpu`: a hub set downloaded and verified, then a serve config for it.

Every file of a model comes from the one commit its revision named when the pull started (the
commit is recorded in the model's marker). The written config is the set's base config (the CPU
or the production one) with each stage pointed at the pulled directory by absolute path, so it
deploys from anywhere on a machine (or cluster) that sees that path. Nothing is downloaded at
serve time: the engines load these directories with the hub switched off.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from services.models.hub import HubClient, verify_download
from services.models.manifest import ModelError, ModelSpec, build_models, load_manifest, write_marker
from services.models.overlay import apply_set

CONFIG_NAME = "serve_config.yaml"


def pull_model(client: HubClient, set_name: str, name: str, spec: ModelSpec, out: Path, fix: str,
               log=print) -> None:
    """Download, verify and mark one hub model."""
    (out / ".parley-model.json").unlink(missing_ok=True)
    revision, hashes = spec.revision, {}
    # The commit the revision names now: every file is then fetched from that one commit.
    commit = client.head(spec.repo, revision, next(iter(spec.files))).commit
    for path, file in spec.files.items():
        remote = client.head(spec.repo, commit or revision, path)
        target = out / path
        client.download(remote, target, f"{name}/{path}")
        hashes[path] = verify_download(target.with_name(target.name + ".part"), target, remote, file.sha256, fix)
    write_marker(out, set_name, name, spec, hashes, sizes={path: (out / path).stat().st_size for path in hashes},
                 repo=spec.repo, revision=revision, commit=commit, endpoint=client.endpoint)


def pull_set(set_name: str, client: HubClient, root: Path | None = None, *, names: list[str] | None = None,
             force: bool = False, base_config: Path | None = None, log=print) -> Path:
    """Pull the named models of a hub set (all by default) and write its serve config."""
    model_set = load_manifest().get(set_name)
    if model_set.source != "hub":
        raise ModelError(f"set {set_name!r} is not a hub set")
    root = Path(root or model_set.root)
    command = f"parley models pull {set_name.removeprefix('hub-')}"
    log(f"pulling the {set_name} set from {client.endpoint} into {root}: {model_set.summary}")
    def pull(name: str, spec: ModelSpec, out: Path) -> None:
        log(f"  {name:30s} {spec.repo}@{spec.revision} ({spec.license})")
        pull_model(client, set_name, name, spec, out, f"rerun `{command}`", log)

    build_models(set_name, model_set, root, names, force, pull, 30, log)
    config = write_config(set_name, root, base_config or Path(model_set.base_config))
    log(f"wrote {config}: deploy it with `parley up --config {config}`")
    return config


def write_config(set_name: str, root: Path, base_config: Path) -> Path:
    """The base serve config with every stage the set covers pointed at the pulled models."""
    if not base_config.exists():
        raise ModelError(f"{base_config} not found: run from the repo root to write a serve config for the set")
    config = apply_set(yaml.safe_load(base_config.read_text()), set_name, root.resolve())
    target = root / CONFIG_NAME
    header = (f"# Written by `parley models pull` from {base_config}: the {set_name} set's models under "
              f"{root.resolve()}.\n# Stages the set has no model for keep the base config's.\n")
    target.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return target
