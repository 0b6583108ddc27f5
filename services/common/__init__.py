"""Pieces shared by every stage: audio, text chunking, typed config, gRPC stream helpers."""
