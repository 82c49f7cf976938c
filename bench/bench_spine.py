"""Live benchmark: N concurrent real peers stream speech (and a face video) in real time; prints JSON.

Per N: end of speech → speech.end / utterance / emotion (p50, p95), ASR real-time factor, face frames analysed
per second per peer and frames dropped, server CPU % and peak RSS, and the CPU the peers themselves used (they
run on the same 2 cores; their video is VP8 encoded once up front, so they only packetise it). Then 50 join/leave cycles (RSS
growth) and optionally one long call (RSS sampled over time).

With --long-turns, each peer speaks three long turns (two sentences joined by a breath shorter than
min_silence): the first interim transcript after each turn's start, interim updates per utterance and those
skipped under load are reported too. With video and N > 1, each utterance's reactions (the other peers are its
listeners) are timed from the speaker's emotion event.

With --cpu-hog N, N processes spin on the CPU (at nice 0, as a neighbour would) for the duration of each run:
the server's CPU is then also reported per thread (the event loop, video decoding, face analysis, ASR), with the
event loop's lag and the work shed (microemo_shed_total), and the peers' own loop lag (the peers share the
cores: their lateness would show as the server's).

python -m bench.bench_spine [--peers 1 2 4] [--cycles 50] [--no-video] [--long-turns] [--long-call-s 600]
                            [--cpu-hog 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import load_settings
from tests.harness import (
    ROOT,
    EventLog,
    ServerProcess,
    _die_with_parent,
    children_of,
    events_url,
    proc_cpu_seconds,
)
from tests.media import SPEECH_RATE, Speech, compose, compose_turns, word_error_rate
from tests.peer import EncodedVideoTrack, Peer, SpeechTrack, encode_vp8
from tests.synth import render_clip

VIDEO_FPS = 15  # what the peers send; the server analyses up to video.analysis_fps of it

SENTENCES = [
    "That is wonderful news, I love it.",
    "Please send me the report before the meeting tomorrow.",
    "I guess it is fine, but I am not sure about the plan.",
]
LONG_TURNS = [
    [
        "I have been thinking about the plan for the new clinic all week long.",
        "We should open it in the spring.",
    ],
    ["The doctors want more rooms for the children.", "I think that is a very good idea, honestly."],
    ["Please send me the numbers before the meeting.", "Then we can decide together on Friday."],
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def scrape(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        text = response.read().decode()
    values = {}
    for name in (
        "microemo_asr_compute_seconds_sum",
        "microemo_asr_audio_seconds_total",
        'microemo_stage_seconds_count{stage="faces"}',
        "microemo_dropped_frames_total",
        'microemo_interim_skipped_total{event="utterance"}',
        'microemo_interim_skipped_total{event="emotion"}',
        'microemo_shed_total{work="face_frames"}',
        'microemo_shed_total{work="interim"}',
        "microemo_loop_lag_seconds_count",
        *(f'microemo_loop_lag_seconds_bucket{{le="{le}"}}' for le in LAG_BUCKETS),
        "microemo_audio_lag_seconds_count",
        "microemo_audio_lag_seconds_sum",
        *(f'microemo_audio_lag_seconds_bucket{{le="{le}"}}' for le in AUDIO_LAG_BUCKETS),
        *(
            f'microemo_stage_latency_seconds_{part}{{stage="{stage}"}}'
            for stage in ("speech.end", "utterance", "emotion")
            for part in ("sum", "count")
        ),
    ):
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else 0.0
    return values


LAG_BUCKETS = ("0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "2.0", "5.0")
AUDIO_LAG_BUCKETS = ("0.01", "0.02", "0.05", "0.1", "0.15", "0.2", "0.3", "0.5", "1.0", "2.0", "5.0")


def p95_bucket_ms(within: dict[str, float], count: float) -> int | str:
    """The upper bound (ms) of the histogram bucket holding p95, from cumulative bucket counts; "inf" past all."""
    p95 = next((le for le, n in within.items() if n >= 0.95 * count), "inf")
    return p95 if p95 == "inf" else round(1000 * float(p95))


def audio_lag(delta: dict[str, float]) -> dict[str, Any] | None:
    """How late audio reached the server's VAD over a run (from its histogram): the mean, the bucket holding p95."""
    count = delta["microemo_audio_lag_seconds_count"]
    if not count:
        return None
    within = {le: delta[f'microemo_audio_lag_seconds_bucket{{le="{le}"}}'] for le in AUDIO_LAG_BUCKETS}
    return {
        "mean_ms": round(1000 * delta["microemo_audio_lag_seconds_sum"] / count),
        "p95_at_most_ms": p95_bucket_ms(within, count),
    }


def loop_lag(delta: dict[str, float]) -> dict[str, Any] | None:
    """The server's event-loop lag over a run, from its histogram: the bucket holding p95 and the share of ticks
    late by 50 ms or more."""
    count = delta["microemo_loop_lag_seconds_count"]
    if not count:
        return None  # a server without the measurement
    within = {le: delta[f'microemo_loop_lag_seconds_bucket{{le="{le}"}}'] for le in LAG_BUCKETS}
    return {
        "p95_at_most_ms": p95_bucket_ms(within, count),
        "late_50ms_percent": round(100 * (count - within["0.05"]) / count, 1),
    }


class CpuHog:
    """`count` processes spinning on the CPU at nice 0 (a busy neighbour), until stopped; they die with us."""

    def __init__(self, count: int) -> None:
        self.processes = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent)
            for _ in range(count)
        ]

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(f"/proc/{p.pid}/stat")[0] for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


class ThreadCpu:
    """The server's CPU by thread name (the event loop is its main thread), sampled every half second while a
    run goes on: a thread that ends in between (a participant's face analysis) keeps its last sample."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._start: dict[int, float] = {}
        self._last: dict[int, tuple[str, float, int]] = {}  # tid → (name, CPU seconds, niceness)
        self._sample(first=True)

    def _sample(self, first: bool = False) -> None:
        for child in children_of(self._pid):  # the face-analysis processes, each as one
            try:
                cpu, nice = proc_cpu_seconds(f"/proc/{child}/stat")
            except (FileNotFoundError, ProcessLookupError):
                continue
            self._start.setdefault(-child, cpu if first else 0.0)
            self._last[-child] = ("face process", cpu, nice)
        for entry in os.listdir(f"/proc/{self._pid}/task"):
            tid = int(entry)
            try:
                cpu, nice = proc_cpu_seconds(f"/proc/{self._pid}/task/{tid}/stat")
                name = Path(f"/proc/{self._pid}/task/{tid}/comm").read_text().strip()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
            self._start.setdefault(tid, cpu if first else 0.0)
            self._last[tid] = ("event loop" if tid == self._pid else name, cpu, nice)

    async def follow(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._sample()

    def percent(self, wall_s: float) -> dict[str, dict[str, Any]]:
        """Per thread name: % of one core over wall_s, and the niceness its threads ran at."""
        groups: dict[str, dict[str, Any]] = {}
        for tid, (name, cpu, nice) in self._last.items():
            group = groups.setdefault(name, {"cpu_percent": 0.0, "threads": 0, "nice": set()})
            group["cpu_percent"] += 100 * (cpu - self._start[tid]) / wall_s
            group["threads"] += 1
            group["nice"].add(nice)
        return {
            name: {**g, "cpu_percent": round(g["cpu_percent"]), "nice": sorted(g["nice"])}
            for name, g in sorted(groups.items(), key=lambda item: -item[1]["cpu_percent"])
        }


async def own_loop_lag(lags: list[float], tick_s: float = 0.1) -> None:
    """How late this process's event loop (the peers' sending) runs a timer, appended to `lags` until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        lags.append(max(0.0, loop.time() - due))


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def face_video() -> list[bytes]:
    """The animated face, 640x480, as VP8 frames encoded once: the peers only send them (looped)."""
    return encode_vp8(list(render_clip(duration_s=4.0, fps=VIDEO_FPS).frames), VIDEO_FPS)


def wire_time(sends: list[tuple[float, int]], started_at: float, t: float) -> float | None:
    """When the audio at media time t (s from the first packet, sent at `started_at`) went on the wire."""
    if not sends:
        return None
    ts0 = sends[0][1]
    for sent, ts in sends:
        if ((ts - ts0) & 0xFFFFFFFF) / 48000 >= t:
            return max(sent, started_at + t)
    return None


async def one_peer(
    server: ServerProcess, call: str, name: str, speech: Speech, frames: list[bytes] | None
) -> tuple[dict[str, list[float]], float]:
    """Latencies (s) from each scripted speech end to speech.end, utterance and emotion, as a subscriber sees
    them (and "wer": the word error rate of the transcripts), and how long the peer streamed."""
    async with EventLog(events_url(server, call)) as events:
        peer = Peer(server.url, call, name)
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, EncodedVideoTrack(frames, fps=VIDEO_FPS) if frames else None)
        while audio.started_at is None:
            await asyncio.sleep(0.005)
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.02)
        await events.wait_for("emotion", participant=name, count=len(speech.spans), timeout=60)
        streamed_s = time.monotonic() - audio.started_at  # video flowed all along, until the leave
        await peer.leave()
        await events.wait_for("participant.leave", participant=name, timeout=30)
    arrival = {id(m): t for m, t in zip(events.messages, events.arrivals, strict=True)}
    latencies: dict[str, list[float]] = {"speech.end": [], "utterance": [], "emotion": []}
    for kind in latencies:
        for message, (_, end) in zip(events.of_type(kind, name), speech.spans, strict=False):
            latencies[kind].append(arrival[id(message)] - (audio.started_at + end))
    # interim: the first interim transcript of each utterance, from the start of its speech (as sent)
    # (issue 22: each utterance longer than 3 s should get its first interim within 2.5 s of its start; one that
    # got none counts as infinitely late)
    latencies["first_interim"], latencies["interim_count"], latencies["first_interim_over_3s"] = [], [], []
    for final, (start, end) in zip(events.of_type("utterance", name), speech.spans, strict=False):
        interim = [m for m in events.interim("utterance", name) if m["utterance"] == final["utterance"]]
        latencies["interim_count"].append(len(interim))
        first = arrival[id(interim[0])] - (audio.started_at + start) if interim else float("inf")
        if interim:
            latencies["first_interim"].append(first)
        if end - start > 3.0:
            latencies["first_interim_over_3s"].append(first)
    # reactions of the other peers to this peer's utterances, from this peer's emotion event
    emotions = {m["utterance"]: arrival[id(m)] for m in events.of_type("emotion", name)}
    latencies["reaction_after_emotion"] = [
        arrival[id(m)] - emotions[m["utterance"]]
        for m in events.of_type("reaction")
        if m["speaker"] == name and m["utterance"] in emotions
    ]
    # The peers share this machine with the server (and the hog): how late each speech end went on the wire,
    # and speech.end measured from there, which is the server's share of the latency
    latencies["sender_late"], latencies["speech.end_from_wire"] = [], []
    for message, (_, end) in zip(events.of_type("speech.end", name), speech.spans, strict=False):
        sent = wire_time(peer.audio_sends, audio.started_at, end)
        if sent is not None:
            latencies["sender_late"].append(sent - (audio.started_at + end))
            latencies["speech.end_from_wire"].append(arrival[id(message)] - sent)
    heard = " ".join(m["text"] for m in events.of_type("utterance", name))
    latencies["wer"] = [word_error_rate(" ".join(speech.sentences), heard)]
    return latencies, streamed_s


def over_3s(firsts: list[float]) -> dict[str, Any]:
    """Utterances longer than 3 s: how many, how many got an interim within 2.5 s of their start, the first
    interim's latency from the start (p50/p95 of those that got one) and how many got none."""
    got = [x for x in firsts if x != float("inf")]
    return {
        "utterances": len(firsts),
        "first_within_2_5s": sum(x <= 2.5 for x in firsts),
        "no_interim": len(firsts) - len(got),
        "first_interim_ms": {
            "p50": round(1000 * percentile(got, 50)),
            "p95": round(1000 * percentile(got, 95)),
        }
        if got
        else None,
    }


async def run_concurrent(
    server: ServerProcess, n: int, speech: Speech, frames: list[bytes] | None, cpu_hog: int = 0
) -> dict[str, Any]:
    hog = CpuHog(cpu_hog)
    threads, peer_lags = ThreadCpu(server.process.pid), []
    watchers = [asyncio.create_task(threads.follow()), asyncio.create_task(own_loop_lag(peer_lags))]
    try:
        hog0 = hog.cpu_seconds()
        before, cpu0, own0, wall0 = scrape(server), server.cpu_seconds(), own_cpu_seconds(), time.monotonic()
        peers = (one_peer(server, f"bench{n}", f"peer{i}", speech, frames) for i in range(n))
        outcomes = await asyncio.gather(*peers)
        results = [latencies for latencies, _ in outcomes]
        after, cpu1, own1, wall1 = scrape(server), server.cpu_seconds(), own_cpu_seconds(), time.monotonic()
        hog1 = hog.cpu_seconds()
    finally:
        for watcher in watchers:
            watcher.cancel()
        hog.stop()

    def delta(name: str) -> float:
        return after[name] - before[name]

    def ms(kind: str) -> dict[str, float] | None:
        values = [x for r in results for x in r[kind]]
        if not values:
            return None
        return {"p50": round(1000 * percentile(values, 50)), "p95": round(1000 * percentile(values, 95))}

    def server_side_mean_ms(
        stage: str,
    ) -> float:  # wall time from when the server heard t1, transport excluded
        count = delta(f'microemo_stage_latency_seconds_count{{stage="{stage}"}}')
        return (
            round(1000 * delta(f'microemo_stage_latency_seconds_sum{{stage="{stage}"}}') / count)
            if count
            else 0
        )

    audio = delta("microemo_asr_audio_seconds_total")
    compute = delta("microemo_asr_compute_seconds_sum")
    report = {
        "peers": n,
        "utterances": sum(len(r["utterance"]) for r in results),
        "speech_end_ms": ms("speech.end"),
        "speech_end_from_wire_ms": ms("speech.end_from_wire"),
        "utterance_ms": ms("utterance"),
        "emotion_ms": ms("emotion"),
        "first_interim_ms": ms("first_interim"),
        "interim_per_utterance": round(float(np.mean([x for r in results for x in r["interim_count"]])), 2),
        "over_3s": over_3s([x for r in results for x in r["first_interim_over_3s"]]),
        "interim_skipped": {
            kind: int(delta(f'microemo_interim_skipped_total{{event="{kind}"}}'))
            for kind in ("utterance", "emotion")
        },
        "reactions": sum(len(r["reaction_after_emotion"]) for r in results),
        "reaction_after_emotion_ms": ms("reaction_after_emotion"),
        "server_side_mean_ms": {k: server_side_mean_ms(k) for k in ("speech.end", "utterance", "emotion")},
        "asr_rtf": round(compute / audio, 3) if audio else None,
        "wer": round(float(np.mean([r["wer"][0] for r in results])), 3),
        "server_cpu_percent": round(100 * (cpu1 - cpu0) / (wall1 - wall0)),
        "peers_cpu_percent": round(100 * (own1 - own0) / (wall1 - wall0)),
        "peak_rss_mb": round(server.read_proc("VmHWM", children=True) / 1024),
        "cpu_hog": cpu_hog,
        "hog_cpu_percent": round(100 * (hog1 - hog0) / (wall1 - wall0)),
        "server_loop_lag": loop_lag({name: delta(name) for name in after}),
        "audio_lag_at_vad": audio_lag({name: delta(name) for name in after}),
        "sender_late_ms": ms("sender_late"),
        "peers_loop_lag_ms": {
            "p95": round(1000 * percentile(peer_lags, 95)),
            "max": round(1000 * max(peer_lags)),
        },
        "shed_interim": int(delta('microemo_shed_total{work="interim"}')),
        "server_cpu_by_thread": threads.percent(wall1 - wall0),
    }
    if frames:
        analysed = delta('microemo_stage_seconds_count{stage="faces"}')
        report["analysed_fps_per_peer"] = round(analysed / sum(streamed for _, streamed in outcomes), 1)
        report["dropped_frames"] = int(delta("microemo_dropped_frames_total"))
        report["shed_face_frames"] = int(delta('microemo_shed_total{work="face_frames"}'))
    return report


async def long_call(server: ServerProcess, seconds: float, frames: list[bytes] | None) -> dict[str, Any]:
    """One participant talks for `seconds` (the sentences over and over); server RSS sampled every 10 s."""
    once = compose(SENTENCES, lead_s=0.5, pause_s=1.2, tail_s=1.2)
    repeats = int(np.ceil(seconds / once.duration))
    samples = np.tile(once.samples, repeats)[: round(seconds * SPEECH_RATE)]
    async with EventLog(events_url(server, "long")) as events:
        peer = Peer(server.url, "long", "talker")
        audio = SpeechTrack(samples, SPEECH_RATE)
        await peer.join(audio, EncodedVideoTrack(frames, fps=VIDEO_FPS) if frames else None)
        samples_mb: list[tuple[float, float]] = []
        while audio.sent_s < seconds:
            await asyncio.sleep(10)
            samples_mb.append(
                (round(audio.sent_s), round(server.read_proc("VmRSS", children=True) / 1024, 1))
            )
        await peer.leave()
        await events.wait_for("participant.leave", timeout=60)
    rss = [mb for _, mb in samples_mb]
    second_minute = [mb for t, mb in samples_mb if 60 <= t < 120] or rss[:1]
    return {
        "seconds": seconds,
        "utterances": len(events.of_type("utterance")),
        "emotions": len(events.of_type("emotion")),
        "rss_mb_at_1_to_2_min": round(float(np.mean(second_minute)), 1),
        "rss_mb_last": rss[-1],
        "rss_mb_max": max(rss),
        "growth_after_2_min_percent": round(
            100 * (rss[-1] - np.mean(second_minute)) / np.mean(second_minute), 2
        ),
        "rss_samples": samples_mb,
    }


async def join_leave_cycles(
    server: ServerProcess, cycles: int, frames: list[bytes] | None, idle_s: float = 30.0
) -> dict[str, Any]:
    short = compose(["Hello there."], lead_s=0.2, pause_s=0.0, tail_s=0.6)
    rss = []
    threads = []
    for i in range(cycles):
        peer = Peer(server.url, "cycles", f"p{i}")
        audio = SpeechTrack(short.samples, SPEECH_RATE)
        await peer.join(audio, EncodedVideoTrack(frames, fps=VIDEO_FPS) if frames else None)
        while audio.sent_s < short.duration:
            await asyncio.sleep(0.02)
        await peer.leave()
        await asyncio.sleep(0.3)
        rss.append(server.read_proc("VmRSS", children=True) / 1024)
        threads.append(server.thread_count())
    await asyncio.sleep(idle_s)
    idle = server.read_proc("VmRSS", children=True) / 1024
    return {
        "cycles": cycles,
        "video": frames is not None,
        "rss_after_first_mb": round(rss[0]),
        "rss_after_last_mb": round(rss[-1]),
        "growth_percent": round(100 * (rss[-1] - rss[0]) / rss[0], 1),
        f"rss_after_{idle_s:g}_s_idle_mb": round(idle),
        "threads_after_first_last_max": [threads[0], threads[-1], max(threads)],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    speech = (
        compose_turns(LONG_TURNS, lead_s=0.5)
        if args.long_turns
        else compose(SENTENCES, lead_s=0.5, pause_s=1.2, tail_s=1.2)
    )
    settings = load_settings(ROOT / "config.yaml")
    frames = None if args.no_video else face_video()
    server_config = {**json.loads(args.config_json), "webrtc": {"host_addresses": ["127.0.0.1"]}}
    out: dict[str, Any] = {
        "config": {
            "min_silence_ms": settings.audio.vad.min_silence_ms,
            "asr": "faster-whisper tiny.en int8",
            "video": None
            if frames is None
            else f"640x480 face at {VIDEO_FPS} fps, analysis_fps {settings.video.analysis_fps}",
            "emotion": "llm" if settings.emotion.llm.enabled else settings.emotion.estimator,
            "cpu_hog": f"{args.cpu_hog} process(es) spinning at nice 0 during each run",
            "server_settings": json.loads(args.config_json),
        },
        "speech_s": round(speech.duration, 2),
        "concurrency": [],
    }
    for n in args.peers:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh server per N, so peak RSS is that N's
            server = ServerProcess(server_config, Path(tmp))
            try:
                out["concurrency"].append(await run_concurrent(server, n, speech, frames, args.cpu_hog))
            finally:
                server.stop()
    if args.cycles:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess(server_config, Path(tmp))
            try:
                out["join_leave"] = await join_leave_cycles(
                    server, args.cycles, frames if args.cycles_with_video else None
                )
            finally:
                server.stop()
    if args.long_call_s:
        with tempfile.TemporaryDirectory() as tmp:
            server = ServerProcess(server_config, Path(tmp))
            try:
                out["long_call"] = await long_call(server, args.long_call_s, frames)
            finally:
                server.stop()
    out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--no-video", action="store_true", help="peers send audio only")
    parser.add_argument("--cycles-with-video", action="store_true", help="join/leave cycles send video too")
    parser.add_argument(
        "--long-turns", action="store_true", help="three long turns each instead of sentences"
    )
    parser.add_argument(
        "--config-json",
        default="{}",
        help='server settings over the defaults, e.g. {"video": {"max_total_fps": 30}}',
    )
    parser.add_argument(
        "--long-call-s", type=float, default=0, help="also one call this long (RSS over time)"
    )
    parser.add_argument(
        "--cpu-hog",
        type=int,
        default=0,
        help="processes spinning on the CPU during each run (a busy neighbour)",
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
