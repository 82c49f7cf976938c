"""Speech: audio frames → 16 kHz chunks → speech probabilities → speech.start/end and closed utterances."""
