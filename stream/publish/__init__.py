"""Publishing: call events fanned out to websocket subscribers and the MQTT bridge."""
