"""Coverage-guided fuzzing (atheris/libFuzzer) of the places where untrusted bytes are first parsed.

Targets (`python -m tests.fuzz --list`): the edge's WebSocket protocol, Twilio Media Streams and
its mu-law codec, caller tokens, and every stage's gRPC request type (parsed from bytes with the
generated classes and run through the stage's own validation). Each target's property: the input
parses, or the project's own typed error comes back (ProtocolError with a documented close code,
CallerHungUp, AuthError, StageError INVALID_ARGUMENT/RESOURCE_EXHAUSTED); any other exception, a
failed check or a task left running is a crash.
"""
