"""gRPC plumbing shared by the stage deployments and their clients.

Stages raise `StageError` for anything a caller did wrong or the stage cannot serve; the
`grpc_stream` decorator turns it into the RPC's status code and details, so a bad request ends
one stream cleanly and the replica keeps serving everyone else.

Stage RPCs are authenticated when a token is configured ($PARLEY_GRPC_TOKEN, or a file named by
$PARLEY_GRPC_TOKEN_FILE, in the replicas' and the callers' environment): every call must carry
`authorization: Bearer <token>`, else it ends UNAUTHENTICATED before the stage reads a message.

No traceback ever reaches a caller: an unexpected error in a stage is logged on its replica and
answered INTERNAL with a one-line message; a method the application does not serve (another
application's, or any on `edge`) is answered UNIMPLEMENTED, after the token check.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from services.common.aio import first_leaf
from services.common.audio import AudioFormatError

logger = logging.getLogger("ray.serve")

# Serve application names double as the `application` metadata a client sends to the proxy.
APPLICATIONS = ("asr", "llm", "tts", "moshi")
DEFAULT_GRPC_ADDRESS = "127.0.0.1:9000"
# Messages are audio frames and text chunks; anything near this size is a client bug or abuse.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# Every servicer Serve's gRPC proxy must register (serve_config.yaml grpc_options lists these).
SERVICER_FUNCTIONS = (
    "services.proto.asr_pb2_grpc.add_SpeechRecognitionServicer_to_server",
    "services.proto.llm_pb2_grpc.add_LanguageModelServicer_to_server",
    "services.proto.tts_pb2_grpc.add_SpeechSynthesisServicer_to_server",
    "services.proto.moshi_pb2_grpc.add_DuplexSpeechServicer_to_server",
    # Not a service: the HTTP proxy's header deadline (services/common/http_limits.py).
    "services.common.http_limits.add_header_deadline_to_server",
)


GRPC_TOKEN_ENV = "PARLEY_GRPC_TOKEN"
GRPC_TOKEN_FILE_ENV = "PARLEY_GRPC_TOKEN_FILE"


def grpc_token() -> str:
    """The bearer token of stage RPCs in this process's environment; empty when not configured."""
    path = os.environ.get(GRPC_TOKEN_FILE_ENV, "").strip()
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(GRPC_TOKEN_ENV, "").strip()


class StageError(Exception):
    """An error with the gRPC status a caller should see."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # Ray pickles it from the replica to the proxy
        return (StageError, (self.code, self.message))


def invalid_argument(message: str) -> StageError:
    return StageError(grpc.StatusCode.INVALID_ARGUMENT, message)


def resource_exhausted(message: str) -> StageError:
    return StageError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


# The details of a RESOURCE_EXHAUSTED that no other replica or retry can serve (the prompt does not
# fit the model's context) start with this: callers must not retry it (OpenAI's name for the error).
CONTEXT_EXCEEDED = "context_length_exceeded"


def context_exceeded(prompt_tokens: int, context_tokens: int) -> StageError:
    """The prompt does not fit the model's context: RESOURCE_EXHAUSTED, never worth a retry."""
    return resource_exhausted(f"{CONTEXT_EXCEEDED}: the prompt of {prompt_tokens} tokens does not fit "
                              f"the model's context of {context_tokens} tokens")


def is_permanent(code: grpc.StatusCode, details: str) -> bool:
    """A RESOURCE_EXHAUSTED that a retry cannot cure (see CONTEXT_EXCEEDED)."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith(CONTEXT_EXCEEDED)


def as_stage_error(error: BaseException, stage: str) -> StageError:
    """The status a caller sees for an error raised in a stage: StageError as it is, malformed audio
    INVALID_ARGUMENT, anything else INTERNAL with a short message (the traceback stays in the log)."""
    error = first_leaf(error)
    if isinstance(error, StageError):
        return error
    if isinstance(error, AudioFormatError):
        return invalid_argument(str(error))
    if _caller_went_away(error):
        logger.info("%s stream ended: the caller cancelled it", stage)
        return StageError(grpc.StatusCode.CANCELLED, f"the {stage} stream was cancelled by its caller")
    logger.error("%s stream failed", stage, exc_info=error)
    return StageError(grpc.StatusCode.INTERNAL, f"the {stage} stage failed ({type(error).__name__}); "
                                                "see the replica's log")


def _caller_went_away(error: BaseException) -> bool:
    """Serve's proxy cancelled the stream's read of the caller's messages: the caller hung up (a
    normal end of a call, not a failure of the stage)."""
    try:
        from ray.exceptions import TaskCancelledError
    except ImportError:  # a stage run without Ray (tests in process)
        return False
    return isinstance(error, TaskCancelledError)


def grpc_stream(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Map StageError (and malformed audio) raised by a streaming Serve method to a gRPC status."""

    # The method gets Serve's grpc context too when it names it (to continue the caller's trace).
    wants_context = "grpc_context" in inspect.signature(method).parameters

    @functools.wraps(method)
    async def wrapper(self, request, grpc_context=None):
        try:
            if grpc_context is not None:  # None: a Serve handle call from inside the cluster
                check_bearer(grpc_context)
            responses = method(self, request, grpc_context=grpc_context) if wants_context else method(self, request)
            async for response in responses:
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as raised:  # noqa: BLE001 - every failure leaves as a status with a short message
            error = as_stage_error(raised, getattr(self, "stage", type(self).__name__))
            if grpc_context is not None:
                grpc_context.set_code(error.code)
                grpc_context.set_details(error.message)
            raise error from None

    # Serve passes `grpc_context` only to methods whose signature names it; functools.wraps would
    # make the signature look like the wrapped method's.
    del wrapper.__wrapped__
    return wrapper


def check_bearer(grpc_context: Any) -> None:
    expected = grpc_token()
    if not expected:
        return
    sent = dict(grpc_context.invocation_metadata()).get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {expected}".encode()):
        raise StageError(grpc.StatusCode.UNAUTHENTICATED,
                         "missing or wrong bearer token: send `authorization: Bearer <$PARLEY_GRPC_TOKEN>`")


async def first_message(requests: AsyncIterator[Any], expected: str) -> Any:
    """Read the stream's first message and check it is the `expected` oneof field (the config)."""
    async for message in requests:
        kind = message.WhichOneof("request")
        if kind != expected:
            raise invalid_argument(f"the first message of the stream must be `{expected}`, got `{kind}`")
        return getattr(message, expected)
    raise invalid_argument(f"the stream ended before its `{expected}` message")


def check_size(actual: int, limit: int, what: str) -> None:
    if actual > limit:
        raise resource_exhausted(f"{what} is {actual}, over the limit of {limit}")


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


# gRPC metadata key Serve's proxy reads as the request's session id (the routing key of the
# consistent-hash request router: every turn of one conversation goes to the same replica).
SESSION_METADATA = "session_id"


def stage_metadata(application: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """Metadata that routes a call through Serve's gRPC proxy to `application`, with the bearer
    token when this process has one."""
    token = grpc_token()
    return (("application", application), *((("authorization", f"Bearer {token}"),) if token else ()), *extra)
