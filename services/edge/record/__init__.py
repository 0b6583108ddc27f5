"""The post-call record (docs/tools.md, "Post-call record"): what a call did, sent once it ended,
to a signed webhook the operator configured. Off by default; no transcript unless opted in."""
