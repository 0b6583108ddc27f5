"""The `moshi` Serve application: the DuplexSpeech gRPC service, many conversations per replica.

One replica runs one model with `engine.slots` slots advanced together by the replica's ticker.
Admission is fail-fast: Serve's `max_ongoing_requests` is the slot count plus one, so one
conversation too many still reaches a replica, which answers RESOURCE_EXHAUSTED at once (the
caller tries another replica or falls back). With exactly `slots` Serve's router would instead
hold the extra caller until some conversation ended. `max_queued_requests = slots` lets a burst
of new calls wait in the router for the moment it takes to assign them (an arrival that finds
the queue full is refused by the router with RESOURCE_EXHAUSTED too).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from services.common import attributes as attr
from services.common.rpc import grpc_stream
from services.common.stage import StageDeployment
from services.moshi.config import MoshiConfig
from services.moshi.engines import load_engine
from services.moshi.session import DuplexSession
from services.moshi.ticker import DuplexTicker


@serve.deployment(name="DuplexSpeech", ray_actor_options={"num_cpus": 1})
class DuplexSpeechDeployment(StageDeployment[MoshiConfig]):
    config_type = MoshiConfig
    stage = "moshi"

    def __init__(self, config: MoshiConfig):
        super().__init__(config, load_engine)
        self.ticker = DuplexTicker(self.engine, self.worker, self.config.tick_ms / 1000, self.config.max_buffered_frames)

    @grpc_stream
    async def Converse(self, requests, grpc_context=None):
        with self.track(attr.SPAN_CONVERSE, grpc_context) as span:
            async for event in DuplexSession(self.ticker, self.config, span).run(requests):
                yield event

    async def stats(self) -> dict[str, Any]:
        ticker = vars(self.ticker.stats).copy()
        return {**await super().stats(), "ticker": ticker,
                "slot_occupancy": ticker["occupied_slots"] / ticker["slots"]}


def build_app(args: MoshiConfig) -> Application:
    config = MoshiConfig.model_validate(args)  # Serve hands over the YAML's dict
    slots = config.engine.slots
    return DuplexSpeechDeployment.options(max_ongoing_requests=slots + 1, max_queued_requests=slots).bind(config)
