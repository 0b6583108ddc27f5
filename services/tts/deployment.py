"""The `tts` Serve application: the SpeechSynthesis gRPC service on one engine per replica."""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from services.common import attributes as attr
from services.common.rpc import grpc_stream
from services.common.stage import StageDeployment
from services.tts.config import TTSConfig, TTSPluginConfig
from services.tts.engines import load_engine
from services.tts.session import SynthesisSession


@serve.deployment(name="SpeechSynthesis", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class SpeechSynthesisDeployment(StageDeployment[TTSConfig]):
    config_type = TTSConfig
    stage = "tts"

    def __init__(self, config: TTSConfig):
        config = TTSConfig.model_validate(config)  # validated here once: the base class takes it as is
        workers = config.engine.num_workers if isinstance(config.engine, TTSPluginConfig) else 1
        super().__init__(config, load_engine, worker_threads=workers)

    @grpc_stream
    async def Synthesize(self, requests, grpc_context=None):
        with self.track(attr.SPAN_SYNTHESIZE, grpc_context) as span:
            async for event in SynthesisSession(self.engine, self.worker, self.config, span).run(requests):
                yield event

    async def voices(self) -> list[str]:
        return self.engine.voices()


def build_app(args: TTSConfig) -> Application:
    return SpeechSynthesisDeployment.bind(args)
