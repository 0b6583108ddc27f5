"""What the edge's stage-stream deadlines cost per item: a real gRPC stream from an in-process
server, read directly and through a `Deadline` (services/edge/streams/base.py), in alternating
rounds. Prints the time per item of each and the difference.

    .venv/bin/python load/deadline_overhead.py [--items 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

from services.common.clients import open_channel
from services.edge.streams.base import within
from services.proto import llm_pb2, llm_pb2_grpc


class Deltas(llm_pb2_grpc.LanguageModelServicer):
    def __init__(self, items: int):
        self.items = items

    async def Generate(self, request, context):
        for _ in range(self.items):
            yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text="word "))


async def read(stub, wrapped: bool) -> float:
    """Seconds to read one whole stream."""
    call = stub.Generate(llm_pb2.GenerateRequest())
    started = time.perf_counter()
    stream = within(15.0).read(call) if wrapped else call
    async for _ in stream:
        pass
    return time.perf_counter() - started


async def main(items: int, rounds: int) -> None:
    server = grpc.aio.server()
    llm_pb2_grpc.add_LanguageModelServicer_to_server(Deltas(items), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with open_channel(f"127.0.0.1:{port}") as channel:
        stub = llm_pb2_grpc.LanguageModelStub(channel)
        await read(stub, False)  # warm-up
        plain, wrapped = [], []
        for _ in range(rounds):
            plain.append(await read(stub, False) / items * 1e6)
            wrapped.append(await read(stub, True) / items * 1e6)
    await server.stop(None)
    p50_plain, p50_wrapped = statistics.median(plain), statistics.median(wrapped)
    print(f"{items} items x {rounds} rounds, median per item: plain {p50_plain:.1f} us, "
          f"with deadlines {p50_wrapped:.1f} us, +{p50_wrapped - p50_plain:.1f} us per item")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.items, args.rounds))
