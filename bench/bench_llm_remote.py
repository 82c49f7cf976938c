"""Prints JSON: utterances/s and p50/p95 added latency through the remote LLM stage at 1, 4, 16 concurrent calls.

Each simulated call is an utterance stream that sends its next utterance as soon as the previous one is
answered (a busy call), through the same RemoteReasoner the stage uses, against a real OpenAI-compatible
server: by default llama-cpp-python's serving the packaged SmolLM2 GGUF on a free loopback port, or any
running server given by --url (e.g. vLLM on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_llm import CANDIDATE_VA, CANDIDATES, UTTERANCES
from model.llm import LLMOutputError, ReasoningRequest, RemoteLLMError, RemoteReasoner
from model.llm.remote import ResponseFormat
from model.settings import LLMSettings


def utterance(call: int, index: int) -> ReasoningRequest:
    clues, transcript = UTTERANCES[(call + index) % len(UTTERANCES)]
    return ReasoningRequest(
        call=f"call-{call}",
        utterance=f"u{index}",
        clues_text=clues,
        transcript=transcript,
        candidates=CANDIDATES[:12],
        candidate_va=CANDIDATE_VA[:12],
    )


async def run_level(settings: LLMSettings, calls: int, per_call: int) -> dict[str, Any]:
    reasoner = RemoteReasoner(settings)
    latencies: list[float] = []
    failed = {"llm_output": 0, "server": 0}

    async def call_stream(call: int) -> None:
        for index in range(per_call):
            started = time.perf_counter()
            try:
                await reasoner.reason(utterance(call, index))
            except LLMOutputError:
                failed["llm_output"] += 1
            except RemoteLLMError:
                failed["server"] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(call_stream(call) for call in range(calls)))
    finally:
        await reasoner.close_loop()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "calls": calls,
        "utterances": len(latencies),
        "wall_s": round(wall, 2),
        "utterances_per_s": round(len(latencies) / wall, 3),
        "added_latency_p50_ms": round(1000 * statistics.median(ordered)),
        "added_latency_p95_ms": round(
            1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        ),
        "failed": failed,
        "retries": reasoner.stats.retries,
    }


async def bench(args: argparse.Namespace, url: str, response_format: ResponseFormat) -> list[dict[str, Any]]:
    settings = LLMSettings(
        enabled=True,
        backend="openai",
        mode="generate",
        url=url,
        served_model=args.model,
        response_format=response_format,
        timeout_s=args.timeout_s,
        max_concurrency=max(args.calls),
    )
    await run_level(settings, 1, 1)  # warm up: the server's first answer loads and compiles its grammar
    return [await run_level(settings, n, max(1, args.utterances // n)) for n in args.calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--utterances", type=int, default=16, help="per level, shared by its calls (>= 1 each)"
    )
    parser.add_argument(
        "--url", help="a running OpenAI-compatible server (default: start llama-cpp-python's)"
    )
    parser.add_argument("--model", help="served model name (default: the first the server lists)")
    parser.add_argument("--response-format", choices=("json_schema", "json_object", "none"))
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads of the started server")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()

    server = None
    if args.url is None:
        from tests.servers import LlamaServer

        server = LlamaServer(Path(tempfile.mkdtemp(prefix="bench-llama-")), threads=args.threads)
    url = args.url or server.url  # type: ignore[union-attr]
    response_format = args.response_format or ("json_object" if server else "json_schema")
    try:
        levels = asyncio.run(bench(args, url, response_format))
    finally:
        if server is not None:
            server.stop()
    print(
        json.dumps(
            {
                "server": "llama-cpp-python (SmolLM2-135M-Instruct Q4_1, CPU)" if server else url,
                "response_format": response_format,
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "levels": levels,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
