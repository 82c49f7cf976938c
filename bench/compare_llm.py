"""Prints JSON: `microemo eval` metrics of the fast estimate alone and refined by the LLM stage, on the same clips.

The clips are generated (espeak-ng speech, the animated test face) with labels known by construction; pass
--manifest to compare on your own labelled clips instead. This is how the default of `emotion.llm.enabled`
is chosen: the LLM stage is on by default only where it does not make labels worse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from stream.config import Settings, load_settings
from stream.evaluate import evaluate_manifest
from stream.offline import OfflinePipeline
from tests.harness import ROOT
from tests.media import LABELLED_SCRIPTS, write_labelled_clips


def script(
    name: str, line: str, face: list[tuple[str, float, float]], labels: list[str], v: float, a: float
) -> dict[str, object]:
    return {"name": name, "face": face, "line": line, "labels": labels, "valence": v, "arousal": a}


# Twelve more everyday moments beside the four of the tests: faces and words agree, as the labels say.
MORE_SCRIPTS = (
    script("thanks", "Thank you so much, this really helps me a lot.", [("smile", 0.8, 2.6)], ["grateful", "happy"], 0.7, 0.2),
    script("surprise", "Wait, what? You are moving to Japan next week?", [("brow_raise", 0.7, 1.6)], ["surprised", "amazed"], 0.2, 0.7),
    script("worry", "I am worried the results will not be ready in time.", [("brow_raise", 0.7, 2.5), ("frown", 0.9, 2.8)], ["worried", "anxious"], -0.5, 0.5),
    script("frustration", "This printer has jammed again, for the third time today.", [("brow_lower", 0.7, 3.0)], ["frustrated", "annoyed"], -0.6, 0.5),
    script("relief", "Oh good, the test came back negative. What a relief.", [("smile", 1.2, 3.0)], ["relieved", "happy"], 0.6, -0.1),
    script("letdown", "I really hoped I would get the job, but they chose someone else.", [("frown", 1.0, 3.6)], ["disappointed", "sad"], -0.6, -0.3),
    script("boredom", "We have been going over the same slides for two hours.", [], ["bored", "tired"], -0.3, -0.6),
    script("victory", "Yes! We won the championship! I can't believe it!", [("smile", 0.7, 2.8), ("brow_raise", 0.7, 1.5)], ["excited", "joyful"], 0.9, 0.9),
    script("fright", "I heard a noise downstairs and I am scared to go and look.", [("brow_raise", 0.8, 2.8)], ["afraid", "scared"], -0.7, 0.7),
    script("revulsion", "That smell is revolting, the milk has gone bad.", [("brow_lower", 0.7, 2.6), ("frown", 0.7, 2.6)], ["disgusted"], -0.7, 0.3),
    script("timetable", "The train leaves at nine and arrives at eleven.", [], ["neutral", "calm"], 0.0, -0.3),
    script("joke", "Ha, that joke was actually pretty funny.", [("smile", 0.6, 2.4)], ["amused", "happy"], 0.7, 0.5),
)  # fmt: skip


def llm_enabled(settings: Settings, enabled: bool) -> Settings:
    emotion = settings.emotion
    llm = emotion.llm.model_copy(update={"enabled": enabled})
    return settings.model_copy(update={"emotion": emotion.model_copy(update={"llm": llm})})


def evaluate(settings: Settings, manifest: Path) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline = OfflinePipeline(settings)
    try:
        report = asyncio.run(evaluate_manifest(pipeline, manifest))
    finally:
        pipeline.close()
    return {
        "models": report["models"],
        "metrics": report["metrics"],
        "seconds": round(time.perf_counter() - started, 1),
        "predicted": {c["clip"]: c["predicted"]["labels"] for c in report["clips"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, help="labelled clips (default: generate 16 into --clips)")
    parser.add_argument("--clips", type=Path, default=Path("/tmp/microemo-eval-clips"))
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = args.manifest or args.clips / "manifest.jsonl"
    if args.manifest is None and not manifest.is_file():
        write_labelled_clips(args.clips, scripts=(*LABELLED_SCRIPTS, *MORE_SCRIPTS))
    base = load_settings(args.config)
    report = {
        "manifest": str(manifest),
        "fast": evaluate(llm_enabled(base, False), manifest),
        "llm": evaluate(llm_enabled(base, True), manifest),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
