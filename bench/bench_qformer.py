"""Prints JSON: ms of one Q-Former cache update at call lengths 10 and 200, and of one encoder pass."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict

import torch

from bench.timing import median_ms
from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder
from model.microemo.qformer import IncrementalQFormerCache, QFormerConfig, VideoQFormer


def cache_update_ms(
    model: VideoQFormer, segment: tuple[torch.Tensor, torch.Tensor], call_lengths: list[int], repeats: int
) -> dict[int, float]:
    """Median ms of the n-th add_utterance per call length n; each repeat starts again from n - 1 utterances.

    The lengths take turns within every repeat, so a slow spell of a shared CPU hits all of them alike.
    """
    caches = {}
    for n in call_lengths:
        caches[n] = IncrementalQFormerCache(model)
        for _ in range(n - 1):
            caches[n].add_utterance(*segment)
    times: dict[int, list[float]] = {n: [] for n in call_lengths}
    for _ in range(repeats):
        for n, cache in caches.items():
            trial = cache.fork()
            start = time.perf_counter()
            trial.add_utterance(*segment)
            times[n].append(time.perf_counter() - start)
    return {n: 1000 * statistics.median(t) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0, help="utterance segment length")
    parser.add_argument("--fps", type=float, default=5.0, help="sampled frames per second")
    args = parser.parse_args()
    torch.manual_seed(0)
    enc_cfg, q_cfg = EncoderConfig(), QFormerConfig()
    encoder, model = GlobalLocalEncoder(enc_cfg).eval(), VideoQFormer(q_cfg).eval()

    T = round(args.seconds * args.fps)
    frames = torch.rand(1, T, 3, enc_cfg.frame_size, enc_cfg.frame_size)
    crops = torch.rand(1, T, 3, enc_cfg.crop_size, enc_cfg.crop_size)
    times = 600.0 + torch.arange(T, dtype=torch.float64)[None] / args.fps
    faces = torch.ones(1, T, dtype=torch.bool)
    with torch.inference_mode():
        out = encoder(frames, times, crops, faces)
        encoder_ms = median_ms(lambda: encoder(frames, times, crops, faces), max(5, args.repeats // 5))
    segment = (out.tokens, out.mask)
    updates = cache_update_ms(model, segment, [10, 200], args.repeats)
    update_10, update_200 = updates[10], updates[200]
    report = {
        "device": f"cpu {platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "encoder_config": asdict(enc_cfg),
        "qformer_config": asdict(q_cfg),
        "segment": {
            "seconds": args.seconds,
            "fps": args.fps,
            "frames": T,
            "encoder_tokens": out.tokens.shape[1],
        },
        "encoder_forward_ms": round(encoder_ms, 2),
        "cache_update_ms": {"call_length_10": round(update_10, 3), "call_length_200": round(update_200, 3)},
        "update_ratio_200_over_10": round(update_200 / update_10, 3),
        "repeats": args.repeats,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
