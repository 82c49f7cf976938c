"""MicroEmo's visual side: global-local encoder, utterance-aware Q-Former with its cache, the LLM prefix."""
