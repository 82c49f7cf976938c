"""Cost of the words in a call's estimate: text clues (VADER, MiniLM) + conversation context + text head, fusion
and label ranking (the learned heads' estimate), p50 per utterance, with 10 and 500 earlier utterances.

python -m bench.bench_dialogue [--repeats 50] [--heads model/data/heads/heads-2.npz]   (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from model.emotion.clues import ClueExtractor, Clues
from model.emotion.estimator import HeadsEstimator
from model.emotion.heads import DEFAULT_HEADS, EmotionHeads
from model.emotion.vocabulary import EmotionVocabulary, SentenceEncoder

SENTENCES = (
    "Thank you so much, that's wonderful",
    "I can't do this anymore",
    "Okay.",
    "Wait, you did what? Are you serious?",
    "Can we talk about the budget for next quarter before the meeting ends",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--heads", type=Path, default=DEFAULT_HEADS)
    args = parser.parse_args()
    heads = EmotionHeads.load(args.heads)
    if heads.text is None:
        raise SystemExit(f"{args.heads} has no text heads (heads/2 has)")
    encoder = SentenceEncoder()
    encoder.embed_one("warm up")
    extractor = ClueExtractor(None, encoder)
    estimator = HeadsEstimator(EmotionVocabulary.load(), heads)
    rng = np.random.default_rng(0)
    results = {}
    for history in (10, 500):
        call = heads.text.conversation()
        past = rng.normal(size=(history, 384)).astype(np.float32)
        for i, vector in enumerate(past / np.linalg.norm(past, axis=1, keepdims=True)):
            call.add("ana" if i % 2 else "ben", vector)
        total, clues_s, rest = [], [], []
        for i in range(args.repeats):
            began = time.perf_counter()
            text = extractor.text_clues(SENTENCES[i % len(SENTENCES)])
            assert text is not None and text.embedding is not None
            read = time.perf_counter()
            words = call.add("ana" if i % 2 else "ben", text.embedding).contextual
            estimator.estimate(Clues(f"u{i}", 0.0, 1.0, text, None, None), words)
            done = time.perf_counter()
            total.append(done - began)
            clues_s.append(read - began)
            rest.append(done - read)
        results[f"history_{history}"] = {  # {history} to {history + repeats} earlier utterances
            "p50_ms": round(1000 * statistics.median(total), 2),
            "text_clues_p50_ms": round(1000 * statistics.median(clues_s), 2),
            "context_fusion_labels_p50_ms": round(1000 * statistics.median(rest), 3),
            "state_floats": call.state_size,
        }
    print(json.dumps({"heads": heads.name, "repeats": args.repeats, **results}, indent=1))


if __name__ == "__main__":
    main()
