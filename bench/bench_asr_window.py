"""Whisper's encoder window, full (30 s every time) against speech (the utterance + 0.5 s, the rest a window of
silence encoded once): word error rate and compute per utterance, on synthetic and real speech. Prints JSON.

Sets (each used when it is on this machine):
- bench: the spine bench's sentences and long turns, spoken by espeak-ng.
- read: real read speech (LibriVox) and spoken card names from Debian's pocketsphinx-testdata.
- conversation: a real two-party telephone call, pyannote.audio's sample.wav with its reference transcript
  sample.stm, cut at each reference turn (±0.15 s). The wheel is not installed, only unpacked:
  `pip download --no-deps pyannote.audio==4.0.7 -d /tmp/p && unzip -o /tmp/p/*.whl 'pyannote/audio/sample/*' -d /tmp/p`
  then `--conversation /tmp/p/pyannote/audio/sample`.
- conversation, live: the same whole call through `microemo analyze` (the server's own VAD cuts the utterances);
  the concatenated final transcripts against the concatenated reference (issue 22's measure).

The two windows run interleaved, clip by clip, so that a busy machine slows both alike. CPU is the process's
(all threads); wall is per clip.

Then the bench set once one by one and once as one batch (audio.asr.batch), per window.

python -m bench.bench_asr_window [--conversation DIR] [--threads 2] [--repeats 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.bench_spine import LONG_TURNS, SENTENCES
from model.audio.whisper import FasterWhisperTranscriber
from stream.config import AsrSettings, load_settings
from tests.harness import ROOT
from tests.media import LIBRIVOX, SPEECH_RATE, decode_mono, espeak, word_error_rate

Window = Literal["full", "speech"]
WINDOWS: tuple[Window, ...] = ("full", "speech")
NUMBERS = "zero one two three four five six seven eight nine ten".split()
MARGIN_S = 0.15


def words_of(text: str) -> str:
    """Lower case, hyphens as spaces, no punctuation, "mr" as "mister", 0-10 as words: the two transcripts
    then differ in words, not in spelling conventions."""
    text = text.lower().replace("-", " ")
    kept = "".join(c if c.isalnum() or c.isspace() or c == "'" else " " for c in text)
    out = []
    for word in kept.split():
        word = word.strip("'")
        if word.isdigit() and int(word) <= 10:
            word = NUMBERS[int(word)]
        out.append("mister" if word == "mr" else word)
    return " ".join(out)


def bench_set() -> list[tuple[str, np.ndarray]]:
    clips = [(s, espeak(s)) for s in SENTENCES]
    return clips + [(" ".join(turn), np.concatenate([espeak(s) for s in turn])) for turn in LONG_TURNS]


def read_set() -> list[tuple[str, np.ndarray]]:
    clips = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = LIBRIVOX.parent / folder / listing
        if not path.is_file():
            return []
        for line in path.read_text().splitlines():
            text, _, name = line.replace("<s>", "").replace("</s>", "").rpartition("(")
            clips.append((text.strip(), decode_mono(path.parent / f"{name.strip(' )')}.wav")))
    return clips


def stm_turns(folder: Path) -> list[tuple[float, float, str]]:
    turns = []
    for line in (folder / "sample.stm").read_text().splitlines():
        _, _, _, start, end, *words = line.split()
        turns.append((float(start), float(end), " ".join(words)))
    return turns


def conversation_set(folder: Path) -> list[tuple[str, np.ndarray]]:
    audio = decode_mono(folder / "sample.wav")
    return [
        (text, audio[max(0, round((t0 - MARGIN_S) * SPEECH_RATE)) : round((t1 + MARGIN_S) * SPEECH_RATE)])
        for t0, t1, text in stm_turns(folder)
    ]


def per_clip(
    clips: list[tuple[str, np.ndarray]], transcribers: dict[Window, FasterWhisperTranscriber], repeats: int
) -> dict[str, Any]:
    edits = {w: 0.0 for w in WINDOWS}
    cpu: dict[Window, list[float]] = {w: [] for w in WINDOWS}
    wall: dict[Window, list[float]] = {w: [] for w in WINDOWS}
    differ = []
    words = 0
    for reference, pcm in clips:
        ref = words_of(reference)
        words += len(ref.split())
        heard = {}
        for window in WINDOWS:
            for _ in range(repeats):
                c, t = time.process_time(), time.perf_counter()
                heard[window] = transcribers[window].transcribe(pcm, 0.0).text
                cpu[window].append(time.process_time() - c)
                wall[window].append(time.perf_counter() - t)
            edits[window] += word_error_rate(ref, words_of(heard[window])) * len(ref.split())
        if words_of(heard["full"]) != words_of(heard["speech"]):
            differ.append({"reference": reference, **heard})
    return {
        "clips": len(clips),
        "words": words,
        "audio_s": round(sum(len(pcm) for _, pcm in clips) / SPEECH_RATE, 1),
        **{
            window: {
                "wer": round(edits[window] / words, 3),
                "word_errors": round(edits[window]),
                "cpu_ms_per_clip": round(1000 * float(np.mean(cpu[window]))),
                "wall_ms_per_clip": {
                    "p50": round(1000 * float(np.median(wall[window]))),
                    "max": round(1000 * max(wall[window])),
                },
            }
            for window in WINDOWS
        },
        "transcripts_that_differ": differ,
    }


def batched(clips: list[tuple[str, np.ndarray]], transcriber: FasterWhisperTranscriber) -> dict[str, Any]:
    """The clips one after another, then as one batch (audio.asr.batch): wall and CPU time for all of them."""
    jobs = [(pcm, 0.0) for _, pcm in clips]
    out: dict[str, Any] = {"clips": len(jobs)}
    for name, run in (
        ("one_by_one", lambda: [transcriber.transcribe(pcm, t) for pcm, t in jobs]),
        ("one_batch", lambda: transcriber.transcribe_batch(jobs)),
    ):
        c, t = time.process_time(), time.perf_counter()
        run()
        out[name] = {
            "wall_ms": round(1000 * (time.perf_counter() - t)),
            "cpu_ms": round(1000 * (time.process_time() - c)),
        }
    return out


def live(folder: Path, threads: int) -> dict[str, Any]:
    """The whole call through `microemo analyze` with each window: the final utterances' words, concatenated,
    against the reference's."""
    reference = words_of(" ".join(text for _, _, text in stm_turns(folder)))
    out: dict[str, Any] = {"reference_words": len(reference.split())}
    with tempfile.TemporaryDirectory() as tmp:
        for window in WINDOWS:
            config = Path(tmp) / f"{window}.yaml"
            text = (ROOT / "config.yaml").read_text()
            text = re.sub(r"(?m)^(    window:) \w+", rf"\1 {window}", text)
            config.write_text(re.sub(r"(?m)^(    cpu_threads:) \d+", rf"\1 {threads}", text))
            asr = load_settings(config).audio.asr
            assert (asr.window, asr.cpu_threads) == (window, threads), "config.yaml's asr lines changed"
            events = Path(tmp) / f"{window}.jsonl"
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "stream.cli", "analyze", str(folder / "sample.wav")]
                + ["--config", str(config), "--out", str(events)],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            lines = [json.loads(line) for line in events.read_text().splitlines()]
            finals = [e for e in lines if e.get("type") == "utterance" and e.get("final", True)]
            heard = words_of(" ".join(e["text"] for e in finals))
            out[window] = {
                "utterances": len(finals),
                "wer": round(word_error_rate(reference, heard), 3),
                "analyze_wall_s": round(time.perf_counter() - started, 1),
                "text": heard,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversation", type=Path, help="pyannote.audio's sample folder (sample.wav, .stm)")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 threads (config.yaml: 2)")
    parser.add_argument("--repeats", type=int, default=1, help="transcriptions of each clip per window")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (compute_type float16 there)")
    args = parser.parse_args()
    compute = "int8" if args.device == "cpu" else "float16"
    transcribers = {
        window: FasterWhisperTranscriber(
            AsrSettings(window=window, cpu_threads=args.threads, device=args.device, compute_type=compute)
        )
        for window in WINDOWS
    }
    sets = {"bench": bench_set(), "read": read_set()}
    if args.conversation is not None:
        sets["conversation"] = conversation_set(args.conversation)
    for pcm in (sets["bench"][0][1], sets["bench"][-1][1]):  # warm up both
        for transcriber in transcribers.values():
            transcriber.transcribe(pcm, 0.0)
    report: dict[str, Any] = {"threads": args.threads, "device": args.device}
    for name, clips in sets.items():
        if clips:
            report[name] = per_clip(clips, transcribers, args.repeats)
    report["batch"] = {window: batched(sets["bench"], t) for window, t in transcribers.items()}
    if args.conversation is not None:
        report["conversation_live"] = live(args.conversation, args.threads)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
