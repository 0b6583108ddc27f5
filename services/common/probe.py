"""A no-op SpeechRecognition deployment that measures what the transport adds.

It answers every audio frame at once with the wall-clock time the frame reached user code, so a
client that notes its send times gets the one-way latency of a hop (client -> Serve's gRPC proxy
-> replica) with no engine work in the way. Deploy it beside the real stages to measure a
cluster's own hops (`python load/stage_hops.py`).
"""

from __future__ import annotations

import time

from ray import serve
from ray.serve import Application

from services.common.rpc import first_message, grpc_stream
from services.proto import asr_pb2


@serve.deployment(name="HopProbe", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
class HopProbeDeployment:
    @grpc_stream
    async def Recognize(self, requests):
        await first_message(requests, "config")
        index = 0
        async for _ in requests:
            # Reuses SpeechStarted as a receipt: offset = receive time (epoch s), id = frame index.
            yield asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(
                audio_offset_s=time.time(), utterance_id=index))
            index += 1


def build_app(args: dict | None = None) -> Application:
    return HopProbeDeployment.bind()
