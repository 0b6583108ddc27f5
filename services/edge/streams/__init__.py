"""Stage streams: one module per stage, each encoding its own requests and riding out a broken or
stalled RPC by re-opening it (replay or skip) within the retry budget (base.py)."""
