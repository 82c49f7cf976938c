"""Faces: video frames → face analysis (a child process) → per utterance, its face window and face event."""
