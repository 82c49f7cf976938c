"""`microemo eval MANIFEST`: labelled lines → the live pipeline's answers → scores (model/training/evaluation.py).

A recording goes through the offline pipeline (the same steps as a live call); a text line goes to the same
emotion service with its words alone, read in its dialogue's order with the turns before it (as a live call's
transcripts are); the report breaks the scores down by modality as by dataset."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from rich import box
from rich.console import Group, RenderableType
from rich.table import Column, Table
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model.emotion.clues import Clues, UtteranceInput
from model.emotion.estimator import EmotionEstimate
from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.evaluation import (
    ClipPrediction,
    LabelledClip,
    ManifestError,
    evaluate,
    load_manifest,
    predicted_family,
    true_family,
)
from model.training.fit_fusion import expected_calibration_error

if TYPE_CHECKING:  # the pipeline's heavy imports are not needed to read or print a report
    from stream.offline import OfflinePipeline

log = logging.getLogger(__name__)


def clip_prediction(messages: list[dict[str, Any]], top_k: int) -> ClipPrediction | None:
    """One reading of a whole clip: its final emotion estimates, each weighted by its utterance's length.

    None when the clip got no final estimate (e.g. nobody spoke): the clip is unanswered, not neutral.
    """
    estimates = [m for m in messages if m["type"] == "emotion" and m["final"]]
    if not estimates:
        return None
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


def clip_models(messages: list[dict[str, Any]]) -> list[str]:
    """The models whose final estimates a clip's prediction rests on."""
    return sorted({m["model"] for m in messages if m["type"] == "emotion" and m["final"]})


async def evaluate_manifest(
    pipeline: OfflinePipeline,
    manifest: Path,
    top_k: int = 3,
    *,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the first `limit` clips (all by default) of a manifest through `pipeline` and score them.

    Keys: manifest, models, metrics, baseline, per_family, confusion, groups, unanswered, failed, clips (one
    detail per clip). A clip whose decoding fails is logged, named in `failed` and scored as unanswered.
    """
    vocabulary = EmotionVocabulary.load()
    clips = load_manifest(manifest)[:limit]
    try:  # before any clip runs: a clip that could not be scored would waste the whole run
        truth = [true_family(clip, vocabulary) for clip in clips]
    except ManifestError as exc:
        raise ManifestError(f"{manifest}: {exc}") from exc
    missing = [clip.name for clip in clips if clip.clip is not None and not clip.clip.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ManifestError(f"{manifest}: {len(missing)} clip file(s) not found: {shown}")
    read = await read_text_lines(pipeline, [c for c in clips if c.text is not None], top_k)
    read |= await read_stills(pipeline, [c for c in clips if c.modality == "image"], top_k)
    predictions: list[ClipPrediction | None] = []
    details, failed, hits = [], [], 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        logging_redirect_tqdm() if progress else nullcontext(),  # log lines above the bar, not through it
        tqdm(total=len(clips), unit="clip", desc="eval", disable=not progress) as bar,
    ):
        for clip, family in zip(clips, truth, strict=True):
            error = None
            try:
                if clip.clip is None or id(clip) in read:  # a text line or a still, read above
                    messages = read[id(clip)]
                else:
                    messages = await pipeline.analyze(clip.clip, Path(tmp) / "events.jsonl", progress=False)
            # A broken file among thousands should not end the run (PyAV's errors are FFmpegErrors).
            except (RuntimeError, OSError, av.error.FFmpegError) as exc:
                log.warning("eval: %s could not be analysed, scored as unanswered: %s", clip.name, exc)
                messages, error = [], str(exc)
                failed.append(clip.name)
            prediction = clip_prediction(messages, top_k)
            predictions.append(prediction)
            details.append(clip_detail(clip, family, prediction, messages, vocabulary, error))
            hits += details[-1]["predicted"]["family"] == family
            bar.set_postfix(accuracy=f"{hits / len(details):.2f}", refresh=False)
            bar.update()
    scores = evaluate(clips, predictions, vocabulary, top_k=top_k)
    scores["metrics"]["family_ece"] = family_calibration(truth, [read.get(id(clip), []) for clip in clips])
    models = sorted({model for detail in details for model in detail["models"]})
    return {"manifest": str(manifest), "models": models, **scores, "failed": failed, "clips": details}


async def read_text_lines(
    pipeline: OfflinePipeline, lines: list[LabelledClip], top_k: int
) -> dict[int, list[dict[str, Any]]]:
    """Each text line's emotion, as the `emotion` message a live call would publish: by the pipeline's emotion
    service, each dialogue in turn order (a line without one is a conversation of its own)."""
    if not lines:
        return {}
    service = pipeline.emotion
    if service is None:
        raise ManifestError("text lines need the emotion stage (emotion.enabled)")
    dialogues: dict[str, list[LabelledClip]] = defaultdict(list)
    for line in lines:
        dialogues[line.dialogue or f"line-{id(line)}"].append(line)
    messages: dict[int, list[dict[str, Any]]] = {}
    for dialogue, turns in dialogues.items():
        turns.sort(key=lambda line: line.turn)
        for line in turns:
            utterance = UtteranceInput(
                utterance=line.name,
                t0=0.0,
                t1=0.0,
                text=line.text or "",
                words=(),
                pcm=np.zeros(0, np.float32),
                face=None,
            )
            speaker = line.groups.get("speaker", "speaker")
            _, estimate = await service.estimate(utterance, None, conversation=(dialogue, speaker))
            messages[id(line)] = [emotion_message(estimate, top_k, service.name)]
        service.end_call(dialogue)
    return messages


def family_calibration(truth: list[str], messages: list[list[dict[str, Any]]]) -> float | None:
    """Expected calibration error of the fused family probabilities, over the lines whose estimate carries them
    (text lines and stills; a recording's events do not); None without any."""
    rows = [
        (FAMILIES.index(family), m[0]["families"]) for family, m in zip(truth, messages, strict=True) if m
    ]
    rows = [(index, families) for index, families in rows if families]
    if not rows:
        return None
    probs = np.array([[families.get(f, 0.0) for f in FAMILIES] for _, families in rows], dtype=np.float64)
    return expected_calibration_error(probs, np.array([index for index, _ in rows], dtype=np.int64))


async def read_stills(
    pipeline: OfflinePipeline, stills: list[LabelledClip], top_k: int
) -> dict[int, list[dict[str, Any]]]:
    """Each still image as a face-only utterance: the face the live engines find in it, shown after a rest at
    the resting face its heads file keeps for its dataset (model/training/face_features.py); no face found: no
    emotion (unanswered), as a call's utterance with no face in view gets no face reading."""
    if not stills:
        return {}
    from model.training.face_features import StillFaceReader, still_clues

    service = pipeline.emotion
    if service is None:
        raise ManifestError("still images need the emotion stage (emotion.enabled)")
    face_meta = (service.heads.meta.get("face") or {}) if service.heads is not None else {}
    resting = face_meta.get("baselines") or {}
    if not resting:
        raise ManifestError("still images need a heads file with a face head (its resting faces): heads/2")
    reader = StillFaceReader()
    messages: dict[int, list[dict[str, Any]]] = {}
    for still in stills:
        assert still.clip is not None
        try:
            face = reader.read_file(still.clip)
        except ValueError as exc:  # an unreadable image among thousands is unanswered, not the end of the run
            log.warning("eval: %s could not be read, scored as unanswered: %s", still.name, exc)
            face = None
        if face is None:
            messages[id(still)] = []
            continue
        baseline = resting.get(still.groups.get("dataset", ""), next(iter(resting.values())))
        clues = Clues(still.name, 0.0, 0.0, None, still_clues(face, baseline), None)
        messages[id(still)] = [emotion_message(await service.estimate_clues(clues), top_k, service.name)]
    return messages


def emotion_message(estimate: EmotionEstimate, top_k: int, model: str) -> dict[str, Any]:
    """An estimate as the final `emotion` event would carry it (the fields a clip's prediction reads)."""
    return {
        "type": "emotion",
        "final": True,
        "t0": 0.0,
        "t1": 0.0,
        "labels": [{"label": w, "score": s} for w, s in estimate.labels[:top_k]],
        "valence": estimate.valence,
        "arousal": estimate.arousal,
        "model": model,
        "families": estimate.families,  # read here, not published: for the calibration of text and stills
    }


def clip_detail(
    clip: LabelledClip,
    family: str,
    prediction: ClipPrediction | None,
    messages: list[dict[str, Any]],
    vocabulary: EmotionVocabulary,
    error: str | None,
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "clip": clip.name,
        "groups": dict(clip.groups),
        "models": clip_models(messages),
        "answered": prediction is not None,
        "truth": {
            "family": family,
            "labels": list(clip.labels),
            "valence": clip.valence,
            "arousal": clip.arousal,
        },
        "predicted": {
            "family": predicted_family(prediction, vocabulary),
            "labels": list(prediction.labels) if prediction else [],
            "valence": round(prediction.valence, 3) if prediction else None,
            "arousal": round(prediction.arousal, 3) if prediction else None,
        },
        "transcript": " ".join(m["text"] for m in messages if m["type"] == "utterance"),
    }
    if error is not None:
        detail["error"] = error
    return detail


def summary(report: dict[str, Any], max_group_rows: int = 20) -> Group:
    """A short human reading of a report: headline scores beside the baseline, per family, confusion, groups."""
    metrics, baseline = report["metrics"], report["baseline"]
    title = (
        f"{report['manifest']}: {metrics['clips']} clips, {metrics['answered']} answered, "
        f"{metrics['unanswered']} unanswered; models: {', '.join(report['models']) or '-'}"
    )
    headline = numbers_table("", ["model", f"majority ({baseline['family']})"])
    for name, key in (("accuracy", "accuracy"), ("weighted F1", "weighted_f1"), ("UAR", "uar")):
        headline.add_row(name, number(metrics[key]), number(baseline[key]))
    headline.add_row(
        "arousal high/low", number(metrics["arousal_accuracy"]), number(metrics["arousal_majority_share"])
    )
    affect = (
        f"CCC valence {number(metrics['ccc_valence'])}, arousal {number(metrics['ccc_arousal'])} "
        f"over {metrics['ccc_clips']} clips"
        if metrics["ccc_valence"] is not None
        else f"CCC: none ({metrics['ccc_clips']} answered clips with valence and arousal; 2 needed)"
    )
    labels = (
        f"labels (top {metrics['top_k']}): precision {number(metrics['label_precision'])}, "
        f"recall {number(metrics['label_recall'])}"
    )
    if metrics.get("family_ece") is not None:
        labels += f"; family probabilities' ECE {number(metrics['family_ece'])}"
    families = numbers_table("family", ["support", "predicted", "precision", "recall", "F1"])
    for family, s in report["per_family"].items():
        families.add_row(
            family,
            str(s["support"]),
            str(s["predicted"]),
            *map(number, (s["precision"], s["recall"], s["f1"])),
        )
    parts: list[RenderableType] = [
        title,
        headline,
        affect,
        labels,
        families,
        confusion_table(report["confusion"]),
    ]
    for key, by_value in report["groups"].items():
        groups = numbers_table(f"by {key}", ["clips", "accuracy", "weighted F1", "majority share"])
        for value, s in list(by_value.items())[:max_group_rows]:
            groups.add_row(
                value, str(s["clips"]), *map(number, (s["accuracy"], s["weighted_f1"], s["majority_share"]))
            )
        if len(by_value) > max_group_rows:
            groups.caption = f"and {len(by_value) - max_group_rows} more in the JSON report"
        parts.append(groups)
    for title, names in (("unanswered", report["unanswered"]), ("failed to decode", report["failed"])):
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            parts.append(f"{title} ({len(names)}): {shown}")
    return Group(*parts)


def confusion_table(confusion: dict[str, Any]) -> Table:
    # Only the rows of families the corpus has; every column, so a misreading shows wherever it goes.
    matrix = numbers_table("truth \\ predicted", [name[:4] for name in confusion["predicted"]])
    for family, counts in zip(confusion["truth"], confusion["counts"], strict=True):
        if sum(counts):
            matrix.add_row(family, *map(str, counts))
    return matrix


def numbers_table(first: str, columns: list[str]) -> Table:
    return Table(first, *(Column(name, justify="right") for name in columns), box=box.SIMPLE_HEAD)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
