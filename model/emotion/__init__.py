"""Emotion engines: clues, the learned heads, the estimator and the open emotion vocabulary."""
