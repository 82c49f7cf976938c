"""Prints JSON: SmolLM2 load time, rank-mode latency per batch size, explanation tokens/s (or any local LLM)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch

from bench.timing import median_ms
from model.emotion.vocabulary import EmotionVocabulary
from model.llm import LLMReasoner, ReasoningRequest
from model.settings import LLMSettings

CANDIDATES = (
    "happy",
    "joyful",
    "content",
    "excited",
    "surprised",
    "calm",
    "bored",
    "sad",
    "disappointed",
    "anxious",
    "afraid",
    "angry",
    "frustrated",
    "disgusted",
    "embarrassed",
    "relieved",
)
CANDIDATE_VA = tuple(EmotionVocabulary.load().affect_of(label) for label in CANDIDATES)
UTTERANCES = (
    (
        "face: smile 2.0–3.5 s (macro), brow raise 1.02–1.24 s (micro); voice: rising pitch, loud; words: 'that's wonderful'",
        "That's wonderful, I really did not expect the contract to come through this week!",
    ),
    (
        "face: brow lowerer 0.4–2.9 s (macro), lip press 1.10–1.31 s (micro); voice: loud, fast; words: 'again', 'unacceptable'",
        "This is the third time the build broke, and again nobody told me. It's unacceptable.",
    ),
    (
        "face: lip corner depressor 0.8–3.0 s (macro); voice: quiet, low pitch, slow; words: 'miss'",
        "I just miss how things were before the team split up.",
    ),
)


def requests(n: int) -> list[ReasoningRequest]:
    return [
        ReasoningRequest(
            call=f"call-{i}",
            utterance="u1",
            clues_text=UTTERANCES[i % len(UTTERANCES)][0],
            transcript=UTTERANCES[i % len(UTTERANCES)][1],
            candidates=CANDIDATES,
            candidate_va=CANDIDATE_VA,
        )
        for i in range(n)
    ]


def explanation_tokens_per_s(reasoner: LLMReasoner, batch: list[ReasoningRequest]) -> dict[str, float]:
    """Greedy explanation of a batch: new tokens per second of wall time, its prompt prefill included."""
    before = reasoner.tokens_generated
    start = time.perf_counter()
    reasoner.explain(batch, [r.candidates[0] for r in batch])
    seconds = time.perf_counter() - start
    written = reasoner.tokens_generated - before
    return {
        "batch": len(batch),
        "new_tokens": written,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(written / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument(
        "--model-path", type=Path, help="local transformers folder (default: packaged SmolLM2)"
    )
    parser.add_argument("--gguf-file", help="GGUF file inside --model-path")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explanation-tokens", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = LLMSettings(
        model_path=args.model_path,
        gguf_file=args.gguf_file,
        device=args.device,
        dtype=args.dtype,
        explanation_tokens=args.explanation_tokens,
    )

    start = time.perf_counter()
    reasoner = LLMReasoner(settings)
    load_s = time.perf_counter() - start
    # The first answer also computes each label's calibration prior and generate's stop-string tables.
    start = time.perf_counter()
    reasoner.reason_batch(requests(1))
    first_answer_s = time.perf_counter() - start

    rank: dict[str, dict[str, float]] = {}
    for size in args.batch_sizes:
        ms = median_ms(partial(reasoner.rank, requests(size)), args.repeats)
        rank[str(size)] = {"ms_per_batch": round(ms, 1), "ms_per_request": round(ms / size, 1)}
    explanation = [
        explanation_tokens_per_s(reasoner, requests(size)) for size in sorted({1, max(args.batch_sizes)})
    ]

    report = {
        "device": f"{reasoner.device} {platform.machine()}, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if reasoner.device.type == "cuda" else ""),
        "torch": torch.__version__,
        "model": reasoner.name,
        "dtype": str(reasoner.dtype),
        "load_s": round(load_s, 2),
        "first_answer_s": round(first_answer_s, 2),
        "candidates_per_request": len(CANDIDATES),
        "rank_prompt_tokens": [len(reasoner.rank_prompt_ids(r)) for r in requests(len(UTTERANCES))],
        "rank_latency": rank,
        "explanation": explanation,
        "repeats": args.repeats,
        # other work on a shared machine slows every figure above; this says how busy it was
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
