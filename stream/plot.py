"""A call's timeline as a PNG: valence/arousal per utterance, labels, transcript, micro-expression marks."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

KIND_COLOURS = {"micro": "tab:red", "macro": "tab:orange"}


def plot_timeline(messages: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    emotions = [m for m in messages if m["type"] == "emotion" and m.get("final", True)]
    utterances = {m["utterance"]: m for m in messages if m["type"] == "utterance"}
    faces = [m for m in messages if m["type"] == "face"]
    end = max([m.get("t1", 0.0) for m in messages] + [1.0])

    fig, (affect, words) = plt.subplots(
        2, 1, figsize=(14, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    for face in faces:
        for episode in face["micro"]:
            colour = KIND_COLOURS.get(episode.get("kind", "macro"), "tab:gray")
            affect.axvspan(episode["onset"], episode["offset"], color=colour, alpha=0.18, lw=0)
            affect.text(
                episode["onset"],
                -1.08,
                episode["region"].replace("_", " "),
                fontsize=7,
                color=colour,
                rotation=90,
                va="bottom",
            )
    for quantity, colour in (("valence", "tab:blue"), ("arousal", "tab:green")):
        xs = [(e["t0"] + e["t1"]) / 2 for e in emotions]
        affect.plot(xs, [e[quantity] for e in emotions], "o-", color=colour, label=quantity)
        for e in emotions:
            affect.hlines(e[quantity], e["t0"], e["t1"], color=colour, alpha=0.35, lw=4)
    for e in emotions:
        labels = ", ".join(label["label"] for label in e["labels"][:2])
        affect.annotate(
            labels,
            ((e["t0"] + e["t1"]) / 2, max(e["valence"], e["arousal"])),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=9,
        )
    affect.axhline(0, color="black", lw=0.5)
    affect.set_ylim(-1.1, 1.1)
    affect.set_ylabel("valence / arousal")
    affect.legend(loc="upper right")
    affect.set_title(title or "emotion timeline (shaded: facial micro/macro-expressions)")

    for i, utterance in enumerate(utterances.values()):
        y = 0.8 - 0.35 * (i % 3)
        words.hlines(y, utterance["t0"], utterance["t1"], color="tab:purple", lw=3)
        text = "\n".join(textwrap.wrap(f"{utterance['participant']}: {utterance['text']}", 40))
        words.text(utterance["t0"], y + 0.04, text, fontsize=8, va="bottom")
    words.set_ylim(0, 1.2)
    words.set_yticks([])
    words.set_xlabel("media time (s)")
    words.set_xlim(0, end + 0.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
