"""Run one fuzz target: `python -m tests.fuzz <target> [libFuzzer flags and corpus dirs]`.

    python -m tests.fuzz websocket -runs=20000
    python -m tests.fuzz llm -max_total_time=120
    python -m tests.fuzz --list

libFuzzer's flags pass through. Without a corpus directory on the command line the run starts
from the target's seeds (tests/fuzz/corpus/<target>/, read only) and keeps what it finds in a
temporary directory. A crash prints the traceback and writes the input to `crash-<sha1>` (see
-artifact_prefix); replay it with `python -m tests.fuzz <target> <that file>`.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

FUZZ_ROOT = Path(__file__).resolve().parent
CORPUS_ROOT = FUZZ_ROOT / "corpus"
DICT_ROOT = FUZZ_ROOT / "dicts"

# target -> (module, function); modules are imported only when their target runs, so that
# atheris instruments the code under test as it is first imported.
TARGETS = {
    "websocket": ("tests.fuzz.websocket", "fuzz_websocket"),
    "twilio": ("tests.fuzz.twilio", "fuzz_twilio"),
    "mulaw": ("tests.fuzz.mulaw", "fuzz_mulaw"),
    "auth": ("tests.fuzz.auth", "fuzz_auth"),
    "asr": ("tests.fuzz.stages", "fuzz_asr"),
    "llm": ("tests.fuzz.stages", "fuzz_llm"),
    "tts": ("tests.fuzz.stages", "fuzz_tts"),
    "moshi": ("tests.fuzz.stages", "fuzz_moshi"),
    "tool_calls": ("tests.fuzz.tool_calls", "fuzz_tool_calls"),
}
# Tokens libFuzzer splices into inputs (dicts/<name>.dict; libFuzzer takes one -dict, so a
# target's dictionaries are concatenated into one file).
DICTIONARIES = {
    "websocket": ("json", "websocket"),
    "twilio": ("json", "twilio"),
    "auth": ("json", "auth"),
    "llm": ("json",),
    "tool_calls": ("json", "tool_calls"),
}
DEFAULT_FLAGS = ("-timeout=10",)  # an input that runs this long is a hang: reported as a crash


def load_target(name: str):
    module, function = TARGETS[name]
    return getattr(importlib.import_module(module), function)


def dictionary_flag(name: str) -> list[str]:
    parts = DICTIONARIES.get(name)
    if not parts:
        return []
    merged = Path(tempfile.gettempdir()) / f"parley-fuzz-{name}.dict"
    merged.write_text("\n".join((DICT_ROOT / f"{part}.dict").read_text() for part in parts))
    return [f"-dict={merged}"]


def has_flag(args: list[str], flag: str) -> bool:
    return any(arg.startswith(f"{flag}=") for arg in args)


def main(argv: list[str]) -> None:
    if argv[1:] == ["--list"]:
        print("\n".join(TARGETS))
        return
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz <{'|'.join(TARGETS)}> [libFuzzer flags] [corpus dirs]")
    name, rest = argv[1], argv[2:]
    import atheris

    test_one_input = load_target(name)
    flags = [flag for flag in DEFAULT_FLAGS if not has_flag(rest, flag.split("=")[0])]
    if not has_flag(rest, "-dict"):
        flags += dictionary_flag(name)
    flags += rest
    if all(arg.startswith("-") for arg in rest):  # no corpus directory or input file given
        seeds = CORPUS_ROOT / name
        flags += [tempfile.mkdtemp(prefix=f"parley-fuzz-{name}-"), *([str(seeds)] if seeds.is_dir() else [])]
    atheris.Setup([f"{argv[0]} {name}", *flags], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
