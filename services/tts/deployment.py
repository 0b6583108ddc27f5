"""The `tts` Serve application: the SpeechSynthesis gRPC service on one engine per replica."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve import Application

from services.common.config import model_dump_public
from services.common.rpc import grpc_stream
from services.common.workers import EngineWorker
from services.tts.config import TTSConfig
from services.tts.engine import load_engine
from services.tts.session import SynthesisSession

logger = logging.getLogger("ray.serve")


@serve.deployment(name="SpeechSynthesis", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class SpeechSynthesisDeployment:
    def __init__(self, config: TTSConfig):
        self.config = TTSConfig.model_validate(config)
        logger.info("loading TTS engine %s", model_dump_public(self.config.engine))
        self.engine = load_engine(self.config.engine)
        self.worker = EngineWorker(1, "tts")

    @grpc_stream
    async def Synthesize(self, requests):
        async for event in SynthesisSession(self.engine, self.worker, self.config).run(requests):
            yield event

    async def voices(self) -> list[str]:
        return self.engine.voices()

    def __del__(self):
        self.worker.close()


def build_app(args: TTSConfig) -> Application:
    return SpeechSynthesisDeployment.bind(args)
