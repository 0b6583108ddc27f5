"""Speech-synthesis stage: Kokoro behind the SpeechSynthesis gRPC service, streaming by sentence and clause."""
