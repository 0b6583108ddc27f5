"""How a stage's failure is logged and turned into a status: a caller hanging up is not an error."""

from __future__ import annotations

import logging

import grpc
from ray.exceptions import TaskCancelledError

from services.common.rpc import as_stage_error


def test_a_caller_hanging_up_is_logged_as_information_not_as_a_failure(caplog):
    with caplog.at_level(logging.INFO, logger="services.common.rpc"):
        error = as_stage_error(ExceptionGroup("stream", [TaskCancelledError()]), "asr")
    assert error.code == grpc.StatusCode.CANCELLED
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert caplog.records[0].exc_info is None


def test_any_other_failure_is_logged_with_its_traceback_and_is_internal(caplog):
    with caplog.at_level(logging.INFO, logger="services.common.rpc"):
        error = as_stage_error(ExceptionGroup("stream", [RuntimeError("engine exploded")]), "asr")
    assert error.code == grpc.StatusCode.INTERNAL and "RuntimeError" in error.message
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
