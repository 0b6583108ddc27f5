"""A gRPC method that an application does not serve is answered UNIMPLEMENTED, after the token check.

Serve's gRPC proxy routes a call by its `application` metadata and then looks the method up by
name on that application's ingress class; a method the class lacks (another stage's, or any on
`edge`) would fail in Serve with INTERNAL and a traceback listing the class's methods, before any
authentication. Ingress classes take `RefusesUnservedMethods` as a base, so the lookup finds a
handler that checks the bearer token and then names the application that serves the method.
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.common.rpc import APPLICATIONS, StageError, grpc_stream
from services.proto import asr_pb2, llm_pb2, moshi_pb2, tts_pb2


def _served_by() -> dict[str, str]:
    """Every Parley gRPC method name -> the application that serves it."""
    served: dict[str, str] = {}
    for module, application in zip((asr_pb2, llm_pb2, tts_pb2, moshi_pb2), APPLICATIONS, strict=True):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                served[method.name] = application
    return served


SERVED_BY = _served_by()


def _refusal(stage: str, method: str) -> Any:
    """A bound streaming method that checks the token, then refuses with a short UNIMPLEMENTED."""
    message = f"the {stage} application does not serve {method}; send `application: {SERVED_BY[method]}`"

    @grpc_stream
    async def refuse(self: Any, request: Any) -> AsyncIterator[Any]:
        raise StageError(grpc.StatusCode.UNIMPLEMENTED, message)
        yield  # an async generator, as every streaming method Serve calls

    return types.MethodType(refuse, types.SimpleNamespace(stage=stage))


class RefusesUnservedMethods:
    """Base of a Serve ingress class: Parley gRPC methods it does not define are refused cleanly."""

    stage = "edge"  # the application's name in the refusal (the stage deployments set theirs)

    def __getattr__(self, name: str) -> Any:
        if name not in SERVED_BY:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return _refusal(type(self).stage, name)
