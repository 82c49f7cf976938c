"""Transcription: closed utterances (and speech so far) → transcripts and utterance events, off the loop."""
