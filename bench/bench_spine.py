"""Spine benchmark: N concurrent real peers stream speech in real time; prints latency, ASR RTF, CPU, RSS as JSON.

python -m bench.bench_spine [--peers 1 2 4] [--cycles 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import load_settings
from tests.harness import ROOT, EventLog, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech, compose
from tests.peer import Peer, SpeechTrack

SENTENCES = [
    "That is wonderful news, I love it.",
    "Please send me the report before the meeting tomorrow.",
    "I guess it is fine, but I am not sure about the plan.",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        text = response.read().decode()
    values = {}
    for name in ("microemo_asr_compute_seconds_sum", "microemo_asr_audio_seconds_total"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values


async def one_peer(server: ServerProcess, call: str, name: str, speech: Speech) -> dict[str, list[float]]:
    """Latencies (s) from each scripted speech end to speech.end and to utterance, as the subscriber sees them."""
    async with EventLog(events_url(server, call)) as events:
        peer = Peer(server.url, call, name)
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio)
        while audio.started_at is None:
            await asyncio.sleep(0.005)
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.02)
        await events.wait_for("utterance", count=len(speech.spans), timeout=60)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)
    arrival = {id(m): t for m, t in zip(events.messages, events.arrivals, strict=True)}
    latencies: dict[str, list[float]] = {"speech.end": [], "utterance": []}
    for kind in latencies:
        for message, (_, end) in zip(events.of_type(kind), speech.spans, strict=False):
            latencies[kind].append(arrival[id(message)] - (audio.started_at + end))
    return latencies


async def run_concurrent(server: ServerProcess, n: int, speech: Speech) -> dict[str, Any]:
    before, cpu0, wall0 = scrape(server), server.cpu_seconds(), time.monotonic()
    results = await asyncio.gather(*(one_peer(server, f"bench{n}", f"peer{i}", speech) for i in range(n)))
    after, cpu1, wall1 = scrape(server), server.cpu_seconds(), time.monotonic()
    end = [x for r in results for x in r["speech.end"]]
    utt = [x for r in results for x in r["utterance"]]
    audio = after["microemo_asr_audio_seconds_total"] - before["microemo_asr_audio_seconds_total"]
    compute = after["microemo_asr_compute_seconds_sum"] - before["microemo_asr_compute_seconds_sum"]
    return {
        "peers": n,
        "utterances": len(utt),
        "speech_end_ms": {"p50": 1000 * percentile(end, 50), "p95": 1000 * percentile(end, 95)},
        "utterance_ms": {"p50": 1000 * percentile(utt, 50), "p95": 1000 * percentile(utt, 95)},
        "asr_rtf": compute / audio if audio else None,
        "cpu_percent": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "peak_rss_mb": server.read_proc("VmHWM") / 1024,
    }


async def join_leave_cycles(server: ServerProcess, cycles: int) -> dict[str, Any]:
    short = compose(["Hello there."], lead_s=0.2, pause_s=0.0, tail_s=0.6)
    rss = []
    for i in range(cycles):
        peer = Peer(server.url, "cycles", f"p{i}")
        audio = SpeechTrack(short.samples, SPEECH_RATE)
        await peer.join(audio, None)
        while audio.sent_s < short.duration:
            await asyncio.sleep(0.02)
        await peer.leave()
        await asyncio.sleep(0.3)
        rss.append(server.read_proc("VmRSS") / 1024)
    return {
        "cycles": cycles,
        "rss_after_first_mb": rss[0],
        "rss_after_last_mb": rss[-1],
        "growth_percent": 100 * (rss[-1] - rss[0]) / rss[0],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    speech = compose(SENTENCES, lead_s=0.5, pause_s=1.2, tail_s=1.2)
    settings = load_settings(ROOT / "config.yaml")
    out: dict[str, Any] = {
        "config": {"min_silence_ms": settings.audio.vad.min_silence_ms, "asr": "faster-whisper tiny.en int8"},
        "speech_s": round(speech.duration, 2),
        "concurrency": [],
    }
    for n in args.peers:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh server per N, so peak RSS is that N's
            server = ServerProcess({"webrtc": {"host_addresses": ["127.0.0.1"]}}, Path(tmp))
            try:
                out["concurrency"].append(await run_concurrent(server, n, speech))
            finally:
                server.stop()
    if args.cycles:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess({"webrtc": {"host_addresses": ["127.0.0.1"]}}, Path(tmp))
            try:
                out["join_leave"] = await join_leave_cycles(server, args.cycles)
            finally:
                server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
