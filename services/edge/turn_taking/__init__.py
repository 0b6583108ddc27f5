"""Turn-taking decisions, each one small, named and replaceable.

- `EndOfTurnDetector` (end_of_turn.py): has the caller's turn ended? Silence alone, or the Smart
  Turn model (smart_turn.py) asked after a short silence, with a longest silence that ends it anyway.
- `InterruptPolicy` (interrupt.py): caller speech over the agent is a barge-in, a backchannel or
  noise; `Overlap` (overlap.py) pauses, resumes or interrupts the agent's turn on its verdicts.
- `IdleCaller` (idle.py): a silent caller is asked once whether they are there, then the call ends.
"""

from services.edge.turn_taking.end_of_turn import EndOfTurnDetector, SilenceEndpointing
from services.edge.turn_taking.interrupt import BackchannelWords, InterruptPolicy, Verdict

__all__ = ["BackchannelWords", "EndOfTurnDetector", "InterruptPolicy", "SilenceEndpointing", "Verdict"]
