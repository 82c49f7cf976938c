"""Run a recording through a pipecat pipeline with MicroEmoProcessor and print what the server reads.

python -m clients.pipecat.example speech.wav [--server http://127.0.0.1:8080] [--token T]

The file plays in real time as a transport's input would (20 ms InputAudioRawFrame chunks at 16 kHz, then an open
microphone's silence); a printer shows each utterance and emotion frame, and MicroEmoContextNote keeps the latest
emotion in an LLMContext, printed at the end. In a bot, put MicroEmoProcessor right after `transport.input()`."""

from __future__ import annotations

import argparse
import asyncio
import time

import av
import numpy as np
from pipecat.frames.frames import EndWorkerFrame, Frame, InputAudioRawFrame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from clients.pipecat import (
    MicroEmoContextNote,
    MicroEmoEmotionFrame,
    MicroEmoFrame,
    MicroEmoProcessor,
    MicroEmoUtteranceFrame,
)

RATE, CHUNK_S, TAIL_S = 16_000, 0.02, 6.0


def read_pcm(path: str) -> bytes:
    """Any audio file as 16 kHz mono s16 bytes."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(path) as container:
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2").tobytes()


class FilePlayer(FrameProcessor):
    """Plays the file in real time, then TAIL_S of silence, then ends the pipeline."""

    def __init__(self, pcm: bytes) -> None:
        super().__init__()
        self._pcm = pcm + bytes(round(TAIL_S * RATE) * 2)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._play())

    async def _play(self) -> None:
        step, start = round(RATE * CHUNK_S) * 2, time.monotonic()
        for index, begin in enumerate(range(0, len(self._pcm), step), 1):
            await self.push_frame(
                InputAudioRawFrame(audio=self._pcm[begin : begin + step], sample_rate=RATE, num_channels=1)
            )
            await asyncio.sleep(max(0.0, start + index * CHUNK_S - time.monotonic()))
        await self.push_frame(EndWorkerFrame())  # the worker ends the pipeline once this reaches its end


class Printer(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, MicroEmoFrame):
            mark = "" if frame.final else " (so far)"
            if isinstance(frame, MicroEmoUtteranceFrame):
                print(f"#{frame.seq} {frame.participant} said{mark}: {frame.text}")
            elif isinstance(frame, MicroEmoEmotionFrame):
                print(f"#{frame.seq} {frame.participant} sounds{mark} {frame.describe()} [{frame.model}]")
        await self.push_frame(frame, direction)


async def main(path: str, server: str, token: str | None) -> None:
    context = LLMContext(messages=[{"role": "system", "content": "You are a friendly receptionist."}])
    pipeline = Pipeline(
        [
            FilePlayer(read_pcm(path)),  # in a bot: transport.input()
            MicroEmoProcessor(server, token=token),
            MicroEmoContextNote(context),  # opt-in: before the user context aggregator
            Printer(),  # in a bot: stt, context aggregator, llm, tts, transport.output()
        ]
    )
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(PipelineWorker(pipeline, enable_rtvi=False))
    await runner.run()
    print("LLM context now:", *context.messages, sep="\n  ")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("audio", help="a recording of speech (wav, mp3, ...)")
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument("--token", help="a token with publish and subscribe rights (when auth is on)")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # pipecat logs every frame at DEBUG
    logger.add(lambda message: print(message, end=""), level="WARNING")
    asyncio.run(main(args.audio, args.server, args.token))
