"""pipecat integration: MicroEmoProcessor sends a pipeline's user audio (and camera) to a MicroEmo server and pushes
its events back as frames; MicroEmoContextNote adds the latest emotion to an LLM context. Needs `pipecat-ai`."""

from clients.pipecat.frames import (
    MicroEmoEmotionFrame,
    MicroEmoErrorFrame,
    MicroEmoFrame,
    MicroEmoReactionFrame,
    MicroEmoUtteranceFrame,
)
from clients.pipecat.processor import MicroEmoContextNote, MicroEmoProcessor

__all__ = [
    "MicroEmoContextNote",
    "MicroEmoEmotionFrame",
    "MicroEmoErrorFrame",
    "MicroEmoFrame",
    "MicroEmoProcessor",
    "MicroEmoReactionFrame",
    "MicroEmoUtteranceFrame",
]
