"""Recordings (manifests) → how sure the recogniser was of each utterance's words (`Transcript.heard`), by dataset:
the percentiles that chose `HEARD_UNSURE` and `HEARD_SURE` (model/emotion/heads.py; model/data/TEXT_HEADS.md).

    python -m model.training.words_heard ravdess_train.jsonl tess.jsonl urdu_dev.jsonl --per-dataset 200

Each clip is cut by the VAD and segmenter and transcribed as a live call would be (the final pass, with word
times). Reads dev and train recordings only: clips reserved for evaluation are refused.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.training.corpora import withheld
from model.training.evaluation import LabelledClip, load_manifest
from model.training.voice_features import VoiceFeatureExtractor, _decode

PERCENTILES = (5, 10, 25, 50, 75, 90)


def heard_by_dataset(clips: list[LabelledClip], extractor: VoiceFeatureExtractor) -> dict[str, list[float]]:
    heard: dict[str, list[float]] = defaultdict(list)
    for clip in tqdm(clips, desc="transcripts", unit="clip", disable=None):
        if withheld(clip.groups):
            raise SystemExit(f"{clip.name}: reserved for evaluation; choose on train or dev recordings only")
        if clip.clip is None:  # a text line: nothing heard
            continue
        for utterance in extractor.utterances(_decode(clip.clip)):
            transcript = extractor.transcriber.transcribe(utterance.pcm, 0.0)
            if transcript.heard is not None:
                heard[clip.groups.get("dataset", "?")].append(transcript.heard)
    return heard


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifests", nargs="+", type=Path)
    parser.add_argument(
        "--per-dataset", type=int, default=200, help="clips drawn from each manifest (seed 0)"
    )
    args = parser.parse_args()
    rng = random.Random(0)
    clips: list[LabelledClip] = []
    for manifest in args.manifests:
        recordings = [clip for clip in load_manifest(manifest) if clip.clip is not None]
        rng.shuffle(recordings)
        clips += recordings[: args.per_dataset]
    heard = heard_by_dataset(clips, VoiceFeatureExtractor())
    print("dataset        utterances  " + "  ".join(f"{p:>5}%" for p in PERCENTILES))
    for dataset, values in heard.items():
        row = "  ".join(f"{v:6.3f}" for v in np.percentile(values, PERCENTILES))
        print(f"{dataset:<14} {len(values):>10}  {row}")


if __name__ == "__main__":
    main()
