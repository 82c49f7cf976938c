"""The pipecat processor's cost to a pipeline and how soon it brings the emotion back. Prints JSON.

A real pipecat pipeline (tests/pipecat_rig.py: speech as 20 ms InputAudioRawFrame chunks in real time, markers,
camera images at 10 fps with --video) → MicroEmoProcessor → a sink, against a real server on loopback:
- time in the processor: for each of the pipeline's own frames, from the push into the processor to its push on
  (pipecat's observer timestamps), p50/p95/max; the same with an empty pass-through processor in its place
  (what any pipecat processor costs) for comparison;
- end of speech → emotion frame: from when the source pushed the chunk where a sentence ends to when its final
  MicroEmoEmotionFrame reached the sink (and its utterance frame), and to the server's `speech.end` (its VAD
  closing: the media path's delay plus min_silence); the same sentences sent by a plain aiortc peer (tests/peer.py,
  events over the websocket) for comparison: what the server itself takes.

python -m bench.bench_pipecat [--repeat 2] [--video]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipecat.frames.frames import Frame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from bench.bench_spine import SENTENCES, percentile
from clients.pipecat import MicroEmoEmotionFrame, MicroEmoFrame, MicroEmoProcessor, MicroEmoUtteranceFrame
from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech, compose
from tests.peer import PatternTrack, Peer, SpeechTrack
from tests.pipecat_rig import Collector, SpeechSource, run_pipeline
from tests.synth import rest_frame


class PassThrough(FrameProcessor):
    """A processor that does nothing but pass frames on: pipecat's own cost of one more processor."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class DwellObserver(BaseObserver):
    """How long each frame pushed into `target` took to be pushed on by it (ns, pipeline clock)."""

    def __init__(self, target: FrameProcessor) -> None:
        super().__init__()
        self._target = target
        self._entered: dict[int, int] = {}
        self.dwell_ns: list[int] = []
        self.kinds: list[str] = []  # the frame class of each dwell

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        if data.destination is self._target:
            self._entered[data.frame.id] = data.timestamp
        elif data.source is self._target and data.frame.id in self._entered:
            self.dwell_ns.append(data.timestamp - self._entered.pop(data.frame.id))
            self.kinds.append(type(data.frame).__name__)

    def summary(self) -> dict[str, Any]:
        """Over all frames, and per frame class."""
        dwell_ms = [ns / 1e6 for ns in self.dwell_ns]
        by_kind = {
            k: summary_ms([d for d, c in zip(dwell_ms, self.kinds, strict=True) if c == k])
            for k in set(self.kinds)
        }
        return {"all": summary_ms(dwell_ms), **dict(sorted(by_kind.items()))}


def summary_ms(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "p50": round(statistics.median(values_ms), 3),
        "p95": round(percentile(values_ms, 95), 3),
        "max": round(max(values_ms), 3),
    }


async def through_pipecat(server: ServerProcess, speech: Speech, video: bool, call: str) -> dict[str, Any]:
    source, sink = SpeechSource(speech.samples, image=rest_frame() if video else None), Collector()
    processor = MicroEmoProcessor(server.url, call=call, host_addresses=["127.0.0.1"], video=video)
    observer = DwellObserver(processor)
    count = len(speech.sentences)

    async def until_all_read() -> None:
        def done(s: Collector) -> bool:
            return sum(isinstance(f, MicroEmoEmotionFrame) and f.final for f in s.frames) >= count

        await sink.wait_until(done, timeout=speech.duration + 120)

    async with EventLog(events_url(server, call, types="speech.end")) as ends:  # when the server's VAD closed
        await run_pipeline([source, processor, sink], until_all_read, observers=[observer])
    arrivals = {id(f): t for f, t in zip(sink.frames, sink.arrivals, strict=True)}
    ours = [f for f in sink.frames if isinstance(f, MicroEmoFrame)]
    utterances = [f for f in ours if isinstance(f, MicroEmoUtteranceFrame) and f.final]
    emotion_ms, utterance_ms = [], []
    for utterance, (_, end_s) in zip(utterances, speech.spans, strict=False):
        spoken = source.wall_time(end_s)
        emotion = next(
            f
            for f in ours
            if isinstance(f, MicroEmoEmotionFrame) and f.final and f.utterance == utterance.utterance
        )
        emotion_ms.append(1000 * (arrivals[id(emotion)] - spoken))
        utterance_ms.append(1000 * (arrivals[id(utterance)] - spoken))
    speech_end_ms = [
        1000 * (arrival - source.wall_time(end_s))
        for arrival, (_, end_s) in zip(ends.arrivals, speech.spans, strict=False)
    ]
    return {
        "dwell": observer.summary(),
        "speech_end_ms": speech_end_ms,
        "emotion_ms": emotion_ms,
        "utterance_ms": utterance_ms,
        "utterances": len(utterances),
        "dropped": processor.dropped,
    }


async def through_pass_through(speech: Speech, video: bool, seconds: float) -> dict[str, Any]:
    source, sink, empty = (
        SpeechSource(speech.samples, image=rest_frame() if video else None),
        Collector(),
        PassThrough(),
    )
    observer = DwellObserver(empty)
    await run_pipeline([source, empty, sink], lambda: asyncio.sleep(seconds), observers=[observer])
    return observer.summary()


async def through_aiortc_peer(
    server: ServerProcess, speech: Speech, video: bool, call: str
) -> dict[str, list[float]]:
    async with EventLog(events_url(server, call, types="speech.end,utterance,emotion")) as events:
        peer = Peer(server.url, call, "user")
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, PatternTrack([rest_frame()], fps=10) if video else None)
        await events.wait_for("emotion", count=len(speech.sentences), timeout=speech.duration + 120)
        await peer.leave()
    assert audio.started_at is not None
    latencies = []
    for utterance, (_, end_s) in zip(events.of_type("utterance"), speech.spans, strict=False):
        index = next(
            i
            for i, m in enumerate(events.messages)
            if m["type"] == "emotion" and m["utterance"] == utterance["utterance"] and m["final"]
        )
        latencies.append(1000 * (events.arrivals[index] - (audio.started_at + end_s)))
    ends = [i for i, m in enumerate(events.messages) if m["type"] == "speech.end"]
    speech_end_ms = [
        1000 * (events.arrivals[i] - (audio.started_at + end_s))
        for i, (_, end_s) in zip(ends, speech.spans, strict=False)
    ]
    return {"emotion_ms": latencies, "speech_end_ms": speech_end_ms}


async def main(repeat: int, video: bool) -> dict[str, Any]:
    speech = compose(SENTENCES * repeat, lead_s=0.6, pause_s=1.5, tail_s=1.5)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipecat-"))
    server = ServerProcess(TEST_CONFIG, workdir)
    try:
        started = time.monotonic()
        pipecat = await through_pipecat(server, speech, video, "bench-pipecat")
        pass_through = await through_pass_through(speech, video, time.monotonic() - started)
        peer = await through_aiortc_peer(server, speech, video, "bench-peer")
    finally:
        server.stop()
    return {
        "sentences": len(speech.sentences),
        "speech_s": round(speech.duration, 1),
        "video": video,
        "time_in_processor_ms": {
            "microemo": pipecat["dwell"],
            "pass_through": pass_through,
        },
        "end_of_speech_to_emotion_frame_ms": summary_ms(pipecat["emotion_ms"]),
        "end_of_speech_to_utterance_frame_ms": summary_ms(pipecat["utterance_ms"]),
        "end_of_speech_to_speech_end_event_ms": summary_ms(pipecat["speech_end_ms"]),
        "aiortc_peer": {
            "end_of_speech_to_emotion_event_ms": summary_ms(peer["emotion_ms"]),
            "end_of_speech_to_speech_end_event_ms": summary_ms(peer["speech_end_ms"]),
        },
        "utterances": pipecat["utterances"],
        "media_dropped": pipecat["dropped"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2, help="how many times the three sentences are said")
    parser.add_argument(
        "--video", action="store_true", help="also send camera images (the astronaut, 10 fps)"
    )
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # pipecat logs every frame link at DEBUG
    print(json.dumps(asyncio.run(main(args.repeat, args.video)), indent=2))
