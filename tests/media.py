"""Test media: speech synthesised with espeak-ng, with the true speech boundaries measured from the audio."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SPEECH_RATE = 16_000


@dataclass(frozen=True)
class Speech:
    """A mono recording and where each scripted sentence is spoken in it (seconds)."""

    samples: np.ndarray  # (n,) float32, SPEECH_RATE Hz
    sentences: tuple[str, ...]
    spans: tuple[tuple[float, float], ...]

    @property
    def duration(self) -> float:
        return len(self.samples) / SPEECH_RATE

    def write_wav(self, path: Path) -> Path:
        import wave

        pcm = (np.clip(self.samples, -1, 1) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SPEECH_RATE)
            out.writeframes(pcm.tobytes())
        return path


def espeak(sentence: str) -> np.ndarray:
    """One sentence as 16 kHz float32, trimmed to where the voice is audible."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), sentence], check=True)
        samples = decode_mono(wav)
    return trim_silence(samples)


def decode_mono(path: Path, rate: int = SPEECH_RATE) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    parts = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


# Real recorded speech that CI has: LibriVox readers of "Sense and Sensibility" (a public-domain recording), in
# Debian's pocketsphinx-testdata (BSD-2; `make test` installs it), with the reference transcripts.
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
READINGS = ("sense_and_sensibility_01_austen_64kb-0880", "sense_and_sensibility_01_austen_64kb-0930")


def librivox_reading(pause_s: float = 1.5) -> tuple[np.ndarray, str]:
    """Two real read utterances, `pause_s` of silence after each ((n,) float32 at SPEECH_RATE), and what is said."""
    transcription = LIBRIVOX / "transcription"
    assert transcription.is_file(), "real speech for this test: apt-get install pocketsphinx-testdata"
    said = {}
    for line in transcription.read_text().splitlines():
        text, _, name = line.rpartition("(")
        said[name.strip(" )")] = text.replace("<s>", "").replace("</s>", "").strip()
    pause = np.zeros(round(pause_s * SPEECH_RATE), np.float32)
    parts = [part for name in READINGS for part in (decode_mono(LIBRIVOX / f"{name}.wav"), pause)]
    return np.concatenate(parts), " ".join(said[name] for name in READINGS)


def trim_silence(samples: np.ndarray, frame: int = 160, floor_db: float = -45.0) -> np.ndarray:
    n = len(samples) // frame
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


def compose(
    sentences: list[str], *, lead_s: float = 0.6, pause_s: float = 1.2, tail_s: float = 1.2
) -> Speech:
    """Sentences separated by silent pauses; spans are measured, not guessed."""
    pieces, spans, t = [np.zeros(round(lead_s * SPEECH_RATE), np.float32)], [], lead_s
    for i, sentence in enumerate(sentences):
        voice = espeak(sentence)
        spans.append((t, t + len(voice) / SPEECH_RATE))
        t += len(voice) / SPEECH_RATE
        gap = pause_s if i < len(sentences) - 1 else tail_s
        pieces += [voice, np.zeros(round(gap * SPEECH_RATE), np.float32)]
        t += gap
    return Speech(np.concatenate(pieces), tuple(sentences), tuple(spans))


def compose_turns(
    turns: list[list[str]],
    *,
    breath_s: float = 0.3,
    pause_s: float = 1.2,
    lead_s: float = 0.6,
    tail_s: float = 1.2,
) -> Speech:
    """Long turns: each turn's sentences joined by a breath shorter than min_silence (one utterance), turns
    separated by pauses; one span and one text per turn."""
    pieces, spans, t = [np.zeros(round(lead_s * SPEECH_RATE), np.float32)], [], lead_s
    for i, turn in enumerate(turns):
        voices = [espeak(sentence) for sentence in turn]
        breath = np.zeros(round(breath_s * SPEECH_RATE), np.float32)
        voice = np.concatenate([part for v in voices for part in (v, breath)][:-1])
        spans.append((t, t + len(voice) / SPEECH_RATE))
        gap = pause_s if i < len(turns) - 1 else tail_s
        pieces += [voice, np.zeros(round(gap * SPEECH_RATE), np.float32)]
        t += len(voice) / SPEECH_RATE + gap
    return Speech(np.concatenate(pieces), tuple(" ".join(turn) for turn in turns), tuple(spans))


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def normalise(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace())


def write_recording(path: Path, frames: list[np.ndarray], fps: int, speech: Speech) -> Path:
    """A recorded call: H.264 video of `frames` (looped to the speech's length) with AAC audio, in one MP4."""
    import fractions

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        audio = container.add_stream("aac", rate=SPEECH_RATE, layout="mono")
        for i in range(int(speech.duration * fps)):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            container.mux(video.encode(frame))
        step = 1024
        pcm = (np.clip(speech.samples, -1, 1) * 32767).astype(np.int16)
        for begin in range(0, len(pcm), step):
            block = pcm[begin : begin + step]
            frame = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = (
                SPEECH_RATE,
                begin,
                fractions.Fraction(1, SPEECH_RATE),
            )
            container.mux(audio.encode(frame))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


# Labelled clips whose truth is known by construction: a rendered face acting, a voice saying a line.
LABELLED_SCRIPTS: tuple[dict[str, object], ...] = (
    {
        "name": "pleased",
        "face": [("smile", 0.9, 3.0)],
        "line": "That is wonderful news, I love it.",
        "labels": ["happy", "delighted"],
        "valence": 0.8,
        "arousal": 0.4,
    },
    {
        "name": "reproach",
        "face": [("brow_lower", 0.7, 3.0)],
        "line": "I can't believe you did that. This is outrageous.",
        "labels": ["angry", "annoyed"],
        "valence": -0.7,
        "arousal": 0.7,
    },
    {
        "name": "condolence",
        "face": [("frown", 0.8, 3.2)],
        "line": "I am so sorry. This is terrible news.",
        "labels": ["sad", "sorry"],
        "valence": -0.7,
        "arousal": -0.3,
    },
    {
        "name": "request",
        "face": [],
        "line": "Please send me the report before the meeting tomorrow.",
        "labels": ["neutral", "calm"],
        "valence": 0.0,
        "arousal": -0.2,
    },
)


def write_labelled_clips(
    folder: Path, fps: int = 15, scripts: Sequence[dict[str, object]] = LABELLED_SCRIPTS
) -> Path:
    """Render scripts (default LABELLED_SCRIPTS) to MP4s and a manifest (JSON lines) beside them; returns it."""
    import json

    from tests.synth import render_clip

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for script in scripts:
        speech = compose([str(script["line"])], lead_s=0.6, pause_s=0.0, tail_s=0.8)
        clip = render_clip(expressions=False, duration_s=speech.duration, fps=fps, script=script["face"])  # type: ignore[arg-type]
        write_recording(folder / f"{script['name']}.mp4", list(clip.frames), fps, speech)
        lines.append(
            json.dumps(
                {
                    "clip": f"{script['name']}.mp4",
                    "labels": script["labels"],
                    "valence": script["valence"],
                    "arousal": script["arousal"],
                    "description": f"says '{script['line']}' with {', '.join(a for a, _, _ in script['face']) or 'a still face'}",  # type: ignore[attr-defined]
                }
            )
        )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
