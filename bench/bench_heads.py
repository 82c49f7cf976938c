"""Prints JSON: CPU ms per utterance of the learned heads' voice path, beside what it replaces or avoids.

For a 4 s utterance of synthesised speech: keeping the Whisper encoder's states during transcription (the
pooling), the prosody the voice head reads, the heads estimator (voice head + fusion + vocabulary ranking) and,
for comparison, the rule-based estimator and a second encoder pass the kept states make unnecessary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np

from bench.timing import median_ms
from model.audio.prosody import measure_prosody
from model.emotion.clues import AudioClues, Clues, TextClues
from model.emotion.estimator import FastEstimator, HeadsEstimator
from model.emotion.heads import DEFAULT_HEADS, EmotionHeads, pool_encoder_states
from model.emotion.text_affect import analyse_text
from model.emotion.vocabulary import EmotionVocabulary
from model.training.voice_features import VoiceFeatureExtractor
from tests.media import SPEECH_RATE, espeak

SENTENCE = "I really did not expect the meeting to run this long, but we got through all of it"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    speech = espeak(SENTENCE)
    pcm = np.zeros(4 * SPEECH_RATE, np.float32)
    pcm[: min(len(speech), len(pcm))] = speech[: len(pcm)]
    extractor = VoiceFeatureExtractor()
    states = np.random.default_rng(0).standard_normal((1500, 384)).astype(np.float32)
    voice = extractor.voice_states(pcm)
    prosody = measure_prosody(pcm)
    text = TextClues(SENTENCE, analyse_text(SENTENCE), None)
    clues = Clues("u-0", 0.0, 4.0, text, None, AudioClues(prosody, voice))
    vocabulary = EmotionVocabulary.load()
    heads = HeadsEstimator(vocabulary, EmotionHeads.load(DEFAULT_HEADS))
    rules = FastEstimator(vocabulary)
    result = {
        "utterance_s": 4.0,
        "pooling_ms": median_ms(lambda: pool_encoder_states(states, len(pcm)), args.repeats),
        "prosody_ms": median_ms(lambda: measure_prosody(pcm), args.repeats),
        "heads_estimate_ms": median_ms(lambda: heads.estimate(clues), args.repeats),
        "rules_estimate_ms": median_ms(lambda: rules.estimate(clues), args.repeats),
        "second_encoder_pass_ms": median_ms(lambda: extractor.voice_states(pcm), max(3, args.repeats // 10)),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    # all the voice head costs per utterance once the transcription has run: pooling, prosody, estimate
    result["voice_path_ms"] = result["pooling_ms"] + result["prosody_ms"] + result["heads_estimate_ms"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
