"""Transports the edge speaks besides its own WebSocket protocol: Twilio Media Streams (and G.711 mu-law)."""
