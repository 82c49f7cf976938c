"""Cost of reading an utterance's words in a call: MiniLM embedding + text head + context, p50 per utterance.

python -m bench.bench_dialogue [--repeats 50]   (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from model.emotion.dialogue import DialogueHeads
from model.emotion.vocabulary import SentenceEncoder

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
    args = parser.parse_args()
    heads = DialogueHeads.load()
    encoder = SentenceEncoder()
    encoder.embed_one("warm up")
    rng = np.random.default_rng(0)
    results = {}
    for history in (10, 500):
        call = heads.conversation()
        past = rng.normal(size=(history, 384)).astype(np.float32)
        for i, vector in enumerate(past / np.linalg.norm(past, axis=1, keepdims=True)):
            call.add("ana" if i % 2 else "ben", vector)
        total, embed, heads_only = [], [], []
        for i in range(args.repeats):
            began = time.perf_counter()
            embedding = encoder.embed_one(SENTENCES[i % len(SENTENCES)])
            embedded = time.perf_counter()
            heads.read_text(embedding)
            call.add("ana" if i % 2 else "ben", embedding)
            done = time.perf_counter()
            total.append(done - began)
            embed.append(embedded - began)
            heads_only.append(done - embedded)
        results[f"history_{history}"] = {  # {history} to {history + repeats} earlier utterances
            "p50_ms": round(1000 * statistics.median(total), 2),
            "embedding_p50_ms": round(1000 * statistics.median(embed), 2),
            "text_head_and_context_p50_ms": round(1000 * statistics.median(heads_only), 3),
            "state_floats": call.state_size,
        }
    print(json.dumps({"heads": heads.name, "repeats": args.repeats, **results}, indent=1))


if __name__ == "__main__":
    main()
