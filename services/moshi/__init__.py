"""Duplex stage: Kyutai Moshi behind the DuplexSpeech gRPC service (deployment lands with the duplex issue)."""
