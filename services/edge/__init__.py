"""The conversation edge: one Conversation per call, over WebSocket, Twilio or LiveKit transports."""
