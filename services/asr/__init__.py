"""Speech recognition stage: streaming VAD + faster-whisper behind the SpeechRecognition gRPC service."""
