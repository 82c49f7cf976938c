"""Emotion: seen utterances → clues and the estimate (+ the LLM's refinement) → emotion and reaction events."""
