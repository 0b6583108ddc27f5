"""The `asr` Serve application: the SpeechRecognition gRPC service on one engine per replica."""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from services.asr.config import ASRConfig
from services.asr.engines import load_engine
from services.asr.session import RecognitionSession
from services.common import attributes as attr
from services.common.rpc import grpc_stream
from services.common.stage import StageDeployment


@serve.deployment(name="SpeechRecognition", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class SpeechRecognitionDeployment(StageDeployment[ASRConfig]):
    config_type = ASRConfig
    stage = "asr"

    def __init__(self, config: ASRConfig):
        config = ASRConfig.model_validate(config)  # validated here once: the base class takes it as is
        super().__init__(config, load_engine, worker_threads=config.engine.num_workers)

    @grpc_stream
    async def Recognize(self, requests, grpc_context=None):
        with self.track(attr.SPAN_RECOGNIZE, grpc_context) as span:
            async for event in RecognitionSession(self.engine, self.worker, self.config, span).run(requests):
                yield event


def build_app(args: ASRConfig) -> Application:
    return SpeechRecognitionDeployment.bind(args)
