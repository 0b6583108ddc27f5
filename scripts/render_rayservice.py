"""Keep the RayService manifest's serve config equal to the repo's serve_config.yaml.

    python scripts/render_rayservice.py            rewrite cluster/kuberay/rayservice.yaml in place
    python scripts/render_rayservice.py --check    exit 1 if it has drifted or is not deployable
                                                   (scripts/check_deployable.py; CI, tests)
    python scripts/render_rayservice.py --plan l4 --out rayservice-l4.yaml
                                                   a manifest whose serve config carries another
                                                   packing plan from cluster/gpu-plans.yaml

The manifest is edited as text: only the block under `serveConfigV2: |` is replaced, so the
manifest's own comments and layout stay as written. By default the block is serve_config.yaml
verbatim (comments included); with --plan it is that config with the plan's GPU shares and engine
caps applied (re-serialized, so without comments).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from check_deployable import deployability_problems  # noqa: E402

from services.packing import apply_plan, config_problems, load_plans  # noqa: E402

SERVE_CONFIG = ROOT / "serve_config.yaml"
MANIFEST = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
_BLOCK_KEY = re.compile(r"^(?P<indent>\s*)serveConfigV2:\s*\|\s*$")


def embed(manifest: str, serve_config: str) -> str:
    """The manifest text with its `serveConfigV2: |` block replaced by `serve_config`."""
    lines = manifest.splitlines()
    start = next((i for i, line in enumerate(lines) if _BLOCK_KEY.match(line)), None)
    if start is None:
        raise ValueError("the manifest has no `serveConfigV2: |` block")
    key_indent = len(_BLOCK_KEY.match(lines[start]).group("indent"))
    end = start + 1
    # The block runs while lines are blank or indented deeper than its key.
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > key_indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the block belong to the manifest
    pad = " " * (key_indent + 2)
    block = [pad + line if line.strip() else "" for line in serve_config.rstrip("\n").splitlines()]
    return "\n".join(lines[:start + 1] + block + lines[end:]) + "\n"


def render(plan: str | None = None) -> str:
    serve_config = SERVE_CONFIG.read_text()
    if plan is not None:
        plans = load_plans()
        if plan not in plans:
            raise SystemExit(f"unknown plan {plan!r}; cluster/gpu-plans.yaml has: {', '.join(plans)}")
        config = apply_plan(yaml.safe_load(serve_config), plans[plan])
        problems = config_problems(config, plans[plan])
        if problems:
            raise SystemExit("the plan does not fit:\n  " + "\n  ".join(problems))
        serve_config = f"# serve_config.yaml with the {plan} packing plan ({plans[plan].gpu})\n" + \
            yaml.safe_dump(config, sort_keys=False, width=120)
    return embed(MANIFEST.read_text(), serve_config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the manifest differs from serve_config.yaml")
    parser.add_argument("--plan", help="a packing plan from cluster/gpu-plans.yaml (l4, h100, h200)")
    parser.add_argument("--out", type=Path, default=MANIFEST)
    args = parser.parse_args()
    text = render(args.plan)
    # The rendered manifest must be able to run its serve config (groups, images, secrets, env).
    manifest = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "RayService")
    problems = deployability_problems(manifest, yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    if problems:
        print("the rendered RayService is not deployable:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.check:
        if args.out.read_text() != text:
            print(f"{args.out} differs from serve_config.yaml: run python scripts/render_rayservice.py",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
