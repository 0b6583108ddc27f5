"""A silent caller: asked once whether they are there, then the call ends politely.

Idle time counts while neither side speaks: from the end of the agent's last turn or the caller's
last speech, once its transcript is in (a slow ASR still working on the caller's words is no
silence to re-prompt). After `idle_reprompt_s` the agent says `idle_reprompt_text` (once per
silence); after `max_idle_s` it says `idle_goodbye_text` and ends the call, which otherwise
holds its stage streams until `max_call_s`. Checked as caller audio arrives and, for a line that
sends none (a muted track, a client that stops streaming), by a timer of the call (`due_in`).
"""

from __future__ import annotations

import enum
import time

from services.edge.config import TurnTakingConfig
from services.edge.transport import CallerHungUp

# How often the call's timer looks at a clock that stands (someone speaking); once it runs again,
# the timer sleeps to its deadline, so only an idle_reprompt_s shorter than this can come late.
IDLE_RECHECK_S = 1.0


class IdleHangUp(CallerHungUp):
    """The agent ended the call after its goodbye to a silent caller (a normal end)."""


class IdleAction(enum.Enum):
    NONE = "none"
    REPROMPT = "reprompt"
    GOODBYE = "goodbye"


class IdleCaller:
    """One call's idle clock."""

    def __init__(self, settings: TurnTakingConfig):
        self._reprompt_s, self._max_s = settings.idle_reprompt_s, settings.max_idle_s
        self.reprompt_text, self.goodbye_text = settings.idle_reprompt_text, settings.idle_goodbye_text
        self._since = time.monotonic()
        self._reprompted = False
        self._speaking = False
        self._transcribing = False  # the caller stopped speaking; their words are not in yet

    def activity(self, caller_speaking: bool | None = None) -> None:
        """Someone spoke (the caller started or stopped, or an agent turn ended): restart the clock.
        The re-prompt counts as agent speech but not as the caller's answer."""
        if caller_speaking is not None:
            self._speaking = caller_speaking
            self._transcribing |= caller_speaking  # cleared by the final that follows the speech
            self._reprompted = False
        self._since = time.monotonic()

    def transcribed(self) -> None:
        """The ASR's final for the caller's speech came in: the silence counts from now."""
        if self._transcribing and not self._speaking:
            self._transcribing = False
            self._since = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._reprompt_s or self._max_s)

    def check(self, agent_busy: bool) -> IdleAction:
        """What to do now, given whether the agent holds a turn."""
        if self._stands(agent_busy):
            return IdleAction.NONE
        idle = time.monotonic() - self._since
        goodbye_s, reprompt_s = self._thresholds()
        if goodbye_s is not None and idle >= goodbye_s:
            return IdleAction.GOODBYE
        if reprompt_s is not None and idle >= reprompt_s:
            self._reprompted = True
            return IdleAction.REPROMPT
        return IdleAction.NONE

    def due_in(self, agent_busy: bool) -> float | None:
        """Seconds until `check` has something to do; None while the clock stands (someone is
        speaking, the caller's words are being transcribed) or nothing is left to do."""
        if self._stands(agent_busy):
            return None
        due = [s for s in self._thresholds() if s is not None]
        return max(0.0, min(due) - (time.monotonic() - self._since)) if due else None

    def _stands(self, agent_busy: bool) -> bool:
        """The clock does not run while someone speaks or the caller's words are not in yet."""
        return agent_busy or self._speaking or self._transcribing

    def _thresholds(self) -> tuple[float | None, float | None]:
        """Idle seconds at which the goodbye and the re-prompt are due (None: not configured, or done).
        The re-prompt's own turn restarts the clock, so the goodbye comes max_idle_s after the last speech."""
        goodbye_s = self._max_s - (self._reprompt_s if self._reprompted else 0) if self._max_s else None
        reprompt_s = self._reprompt_s if self._reprompt_s and not self._reprompted else None
        return goodbye_s, reprompt_s
