"""`microemo eval MANIFEST`: the offline pipeline on labelled clips, scored by model/evaluation.py."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from model.evaluation import ClipPrediction, evaluate, load_manifest
from model.vocabulary import EmotionVocabulary
from stream.offline import OfflinePipeline


def clip_prediction(messages: list[dict[str, Any]], top_k: int) -> ClipPrediction:
    """One reading of a whole clip: its final emotion estimates, each weighted by its utterance's length."""
    estimates = [m for m in messages if m["type"] == "emotion" and m["final"]]
    if not estimates:
        return ClipPrediction(labels=("neutral",), valence=0.0, arousal=0.0)
    weights = [max(0.1, m["t1"] - m["t0"]) for m in estimates]
    total = sum(weights)
    scores: dict[str, float] = defaultdict(float)
    for message, weight in zip(estimates, weights, strict=True):
        for label in message["labels"]:
            scores[label["label"]] += weight * label["score"]
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)[:top_k]
    return ClipPrediction(
        labels=tuple(ranked),
        valence=sum(w * m["valence"] for m, w in zip(estimates, weights, strict=True)) / total,
        arousal=sum(w * m["arousal"] for m, w in zip(estimates, weights, strict=True)) / total,
    )


async def evaluate_manifest(pipeline: OfflinePipeline, manifest: Path, top_k: int = 3) -> dict[str, Any]:
    clips = load_manifest(manifest)
    predictions, details = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            messages = await pipeline.analyze(clip.clip, Path(tmp) / "events.jsonl", progress=False)
            prediction = clip_prediction(messages, top_k)
            predictions.append(prediction)
            details.append(
                {
                    "clip": clip.clip.name,
                    "truth": {"labels": list(clip.labels), "valence": clip.valence, "arousal": clip.arousal},
                    "predicted": {
                        "labels": list(prediction.labels),
                        "valence": round(prediction.valence, 3),
                        "arousal": round(prediction.arousal, 3),
                    },
                    "transcript": " ".join(m["text"] for m in messages if m["type"] == "utterance"),
                }
            )
    models = sorted({m["model"] for m in messages if m["type"] == "emotion"}) if clips else []
    report = evaluate(clips, predictions, EmotionVocabulary.load(), top_k=top_k)
    return {"manifest": str(manifest), "models": models, "metrics": report, "clips": details}
