"""Sending post-call records: after the call, in the background, signed, with bounded retries.

A call's end never waits for its record: the host hands the record over and closes the call;
the POST runs as a task this sender owns (at most MAX_PENDING at once), each attempt bounded by
`timeout_s`, at most `attempts` of them. The replica's shutdown waits a little for what is still
pending, then cancels it (`aclose`), so no task outlives the edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from services.common.signing import signed_headers
from services.edge.record.config import PostCallConfig

logger = logging.getLogger("ray.serve")

MAX_PENDING = 256  # records in flight per edge replica; beyond it a record is dropped (and logged)


def end_reason(failure_code: str | None, idle_ended: bool) -> str:
    """Why the call ended: the failure table's code (agent_ended, transferred, call_time_limit,
    stage_unavailable, ...), else `idle_timeout` after the idle goodbye, else `caller_hung_up`."""
    if failure_code:
        return failure_code
    return "idle_timeout" if idle_ended else "caller_hung_up"


class RecordSender:
    """One edge replica's post-call record deliveries."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self.sent = self.failed = self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def send(self, config: PostCallConfig, record: dict[str, Any]) -> asyncio.Task | None:
        """Start delivering `record` (returns at once); None when it cannot be sent."""
        secret = os.environ.get(config.secret_env, "")
        if not secret:
            logger.warning("post-call record of %s not sent: no secret in $%s", record.get("call_id"), config.secret_env)
            self.dropped += 1
            return None
        if len(self._tasks) >= MAX_PENDING:
            logger.warning("post-call record of %s dropped: %d records already pending", record.get("call_id"),
                           len(self._tasks))
            self.dropped += 1
            return None
        body = json.dumps(record, separators=(",", ":")).encode()
        task = asyncio.get_running_loop().create_task(self._deliver(config, secret, body, record.get("call_id")),
                                                      name=f"{record.get('call_id')}:record")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, config: PostCallConfig, secret: str, body: bytes, call_id: Any) -> bool:
        import httpx

        problem = ""
        # Redirects are not followed: the record must not be bounced to another host.
        async with httpx.AsyncClient(follow_redirects=False, timeout=config.timeout_s) as client:
            for attempt in range(config.attempts):
                if attempt:
                    await asyncio.sleep(config.retry_backoff_s * 2 ** (attempt - 1))
                try:
                    # Signed afresh each attempt: the timestamp must be recent when it arrives.
                    response = await client.post(config.url, content=body, headers=signed_headers(secret, body))
                except httpx.HTTPError as error:
                    problem = type(error).__name__
                    continue
                if 200 <= response.status_code < 300:
                    self.sent += 1
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refused it: sending it again would not help
        logger.warning("post-call record of %s not delivered (%s)", call_id, problem)
        self.failed += 1
        return False

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Wait up to `timeout_s` for pending deliveries, then cancel the rest."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
