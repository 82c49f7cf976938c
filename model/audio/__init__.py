"""Audio engines: voice activity (silero), utterance segmentation, Whisper transcription, prosody."""
