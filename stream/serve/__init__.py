"""Serving: the aiohttp app, offer admission, auth, drain and the WebRTC patches; wiring only."""
