"""The `asr` Serve application: the SpeechRecognition gRPC service on one engine per replica."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve import Application

from services.asr.config import ASRConfig
from services.asr.engine import load_engine
from services.asr.session import RecognitionSession
from services.common.config import model_dump_public
from services.common.rpc import grpc_stream
from services.common.workers import EngineWorker

logger = logging.getLogger("ray.serve")


@serve.deployment(name="SpeechRecognition", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class SpeechRecognitionDeployment:
    def __init__(self, config: ASRConfig):
        self.config = ASRConfig.model_validate(config)
        logger.info("loading ASR engine %s", model_dump_public(self.config.engine))
        self.engine = load_engine(self.config.engine)
        self.worker = EngineWorker(self.config.engine.num_workers, "asr")

    @grpc_stream
    async def Recognize(self, requests):
        async for event in RecognitionSession(self.engine, self.worker, self.config).run(requests):
            yield event

    def __del__(self):
        self.worker.close()


def build_app(args: ASRConfig) -> Application:
    return SpeechRecognitionDeployment.bind(args)
