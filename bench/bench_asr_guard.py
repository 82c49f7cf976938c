"""Whisper's repetition guard: WER and repetition loops on the spine bench's sentences, clean and degraded, with
the transcription options as configured and without the guard (faster-whisper's defaults as used before).

Degraded: 20 ms frames lost at random (zeroed, or repeated as packet-loss concealment does), white noise, and
stretches of silence inside an utterance (where Whisper invents words). Prints JSON.

python -m bench.bench_asr_guard [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from bench.bench_spine import SENTENCES
from model.audio.whisper import FasterWhisperTranscriber
from stream.config import AsrSettings
from tests.media import SPEECH_RATE, espeak, normalise, word_error_rate

FRAME = SPEECH_RATE // 50  # 20 ms


def lose_frames(samples: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    out = samples.copy()
    for start in range(0, len(out) - FRAME, FRAME):
        if rng.random() < fraction:
            out[start : start + FRAME] = 0
    return out


def stutter(samples: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Lost 20 ms frames replaced by the frame before (a receiver's packet-loss concealment repeats)."""
    out = samples.copy()
    for start in range(FRAME, len(out) - FRAME, FRAME):
        if rng.random() < fraction:
            out[start : start + FRAME] = out[start - FRAME : start]
    return out


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(samples**2))
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(samples))
    return (samples + noise).astype(np.float32)


def with_gaps(samples: np.ndarray, gap_s: float) -> np.ndarray:
    """The sentence cut in three with `gap_s` of silence between the parts."""
    parts = np.array_split(samples, 3)
    gap = np.zeros(round(gap_s * SPEECH_RATE), np.float32)
    return np.concatenate([parts[0], gap, parts[1], gap, parts[2]])


def longest_repeat(text: str) -> int:
    """How often the most repeated word n-gram (n = 1..4) occurs back to back: a loop shows as a large count."""
    words = normalise(text).split()
    best = 1
    for n in range(1, 5):
        for start in range(len(words) - n):
            count = 1
            while words[start + count * n : start + (count + 1) * n] == words[start : start + n]:
                count += 1
            best = max(best, count)
    return best


def run(guard: bool, clips: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    settings = AsrSettings(repetition_guard=guard)
    transcriber = FasterWhisperTranscriber(settings)
    by_condition: dict[str, list[tuple[float, int, float]]] = {}
    samples_out = {}
    for condition, reference, pcm in clips:
        started = time.perf_counter()
        text = transcriber.transcribe(pcm, 0.0).text
        seconds = time.perf_counter() - started
        by_condition.setdefault(condition, []).append(
            (word_error_rate(reference, text), longest_repeat(text), seconds)
        )
        if longest_repeat(text) >= 3:
            samples_out.setdefault(condition, text[:120])
    return {
        condition: {
            "wer": round(float(np.mean([w for w, _, _ in rows])), 3),
            "loops": sum(r >= 3 for _, r, _ in rows),
            "clips": len(rows),
            "max_s": round(max(s for _, _, s in rows), 2),
        }
        for condition, rows in by_condition.items()
    } | {"loop_examples": samples_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    voices = [(s, espeak(s)) for s in SENTENCES]
    clips: list[tuple[str, str, np.ndarray]] = [("clean", s, v) for s, v in voices]
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for sentence, voice in voices:
            clips += [
                ("lost_10pct", sentence, lose_frames(voice, 0.10, rng)),
                ("lost_25pct", sentence, lose_frames(voice, 0.25, rng)),
                ("noise_5db", sentence, add_noise(voice, 5.0, rng)),
                ("stutter_30pct", sentence, stutter(voice, 0.30, rng)),
            ]
    clips += [("gaps_2s", s, with_gaps(v, 2.0)) for s, v in voices]
    report = {"unguarded": run(False, clips), "guarded": run(True, clips)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
