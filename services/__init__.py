"""Parley: a self-hosted realtime voice-agent serving system on Ray Serve."""

__version__ = "0.1.0"
