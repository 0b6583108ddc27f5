"""Regenerate services/proto/*_pb2*.py from protos/parley/v1/*.proto.

Run: python scripts/gen_protos.py   (needs grpcio-tools, from the dev extra)

The generated modules live inside the `services` package so that Serve's gRPC proxy can import
them from any process that has Parley installed. protoc writes `from parley.v1 import x_pb2`;
we rewrite that (and the module name the message classes are registered under) to the
package path.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "services" / "proto"
IMPORT = re.compile(r"^from parley\.v1 import (\w+_pb2)", re.M)
# The message classes' __module__; it must be importable or Ray cannot pickle the messages.
MODULE_NAME = re.compile(r"'parley\.v1\.(\w+_pb2)'")


def main() -> int:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("parley/v1/*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *sources]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        for stale in OUT.glob("*_pb2*.py*"):
            stale.unlink()
        for generated in sorted(Path(tmp, "parley", "v1").iterdir()):
            text = IMPORT.sub(r"from services.proto import \1", generated.read_text())
            text = MODULE_NAME.sub(r"'services.proto.\1'", text)
            (OUT / generated.name).write_text(text)
    (OUT / "__init__.py").write_text('"""Generated from protos/parley/v1 by scripts/gen_protos.py. Do not edit."""\n')
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
