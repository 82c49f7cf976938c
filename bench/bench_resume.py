"""Resume benchmark: a real call of repeated espeak speech (a real aiortc peer, the whole pipeline) lasting about
`--call-s` seconds; a clients/microemo.py subscriber follows it through a TCP proxy that is cut `--reconnects`
times, evenly spread, each time for `--outage-s` seconds (connections dropped, new ones refused); a second
subscriber, connected straight to the server, records the whole call. Prints JSON: events lost and duplicated by
the resuming subscriber (against the direct one), out of order, gaps it was told of, reconnects, events replayed.

python -m bench.bench_resume [--call-s 240] [--reconnects 20] [--outage-s 2] [--no-video]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from clients.microemo import Event, MicroEmo
from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, events_url
from tests.media import SPEECH_RATE, compose
from tests.peer import stream_speech
from tests.proxy import CuttableProxy

SENTENCES = [
    "That is wonderful news, I love it.",
    "Please send me the report before the meeting tomorrow.",
    "I am not sure this plan is going to work.",
    "We finally finished the project and everyone is happy.",
    "Why does this keep happening to us every single week?",
    "Let us take a short break and come back to it later.",
]


def metric(server: ServerProcess, name: str) -> dict[str, float]:
    """A counter's values by label set (the empty string for none)."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$"
    return {labels or "": float(value) for labels, value in re.findall(pattern, text, re.M)}


async def follow(client: MicroEmo, into: list[Event]) -> None:
    async for event in client.events():
        into.append(event)


async def run(call_s: float, reconnects: int, outage_s: float, video: bool) -> dict[str, Any]:
    sentences = SENTENCES * max(1, round(call_s / (4.2 * len(SENTENCES))))
    speech = compose(sentences, lead_s=0.6, pause_s=1.2, tail_s=1.2)
    workdir = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    server = ServerProcess(TEST_CONFIG, workdir)
    call = "bench-resume"
    proxy = CuttableProxy(server.port)
    await proxy.start()
    client = MicroEmo(f"ws://127.0.0.1:{proxy.port}", call)
    received: list[Event] = []
    outages: list[int] = []  # events the direct subscriber got while the proxy was down, per outage
    try:
        replayed_before = metric(server, "microemo_events_replayed_total").get("", 0.0)
        async with EventLog(events_url(server, call)) as reference:
            following = asyncio.create_task(follow(client, received))
            while client.connections == 0:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            talking = asyncio.create_task(
                stream_speech(server.url, call, "kim", speech.samples, SPEECH_RATE, video=video)
            )
            period = speech.duration / (reconnects + 1)
            for i in range(1, reconnects + 1):
                await asyncio.sleep(max(0.0, started + i * period - time.monotonic()))
                await proxy.cut()
                seen = len(reference.messages)
                await asyncio.sleep(outage_s)
                outages.append(len(reference.messages) - seen)
                await proxy.start()
            await talking
            await reference.wait_for("participant.leave", timeout=120)
            last = reference.messages[-1]["seq"]
            deadline = time.monotonic() + 60
            while client.last_seq != last and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        resumes = metric(server, "microemo_resumes_total")
        replayed = metric(server, "microemo_events_replayed_total").get("", 0.0) - replayed_before
    finally:
        await proxy.close()
        server.stop()
    expected = [m["seq"] for m in reference.messages if "seq" in m]
    got = [e.seq for e in received if e.seq is not None]
    counts = Counter(got)
    return {
        "call": "real aiortc peer, repeated espeak speech" + (" and a video pattern" if video else ""),
        "call_s": round(speech.duration, 1),
        "forced_reconnects": proxy.cuts,
        "outage_s": outage_s,
        "events_in_call": len(expected),
        "reference_complete": expected == list(range(1, len(expected) + 1)),
        "events_received": len(got),
        "events_lost": len(set(expected) - set(got)),
        "events_duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "out_of_order": sum(1 for a, b in zip(got, got[1:], strict=False) if b <= a),
        "duplicates_skipped_by_client": client.duplicates,
        "gaps_told": sum(1 for e in received if e.gap),
        "errors": [e.data for e in received if e.type == "error"],
        "connections": client.connections,
        "events_published_during_outages": outages,
        "events_replayed": replayed,
        "resumes": resumes,
        "identical_to_reference": [e.data for e in received] == reference.messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--call-s", type=float, default=240.0, help="about this long a call")
    parser.add_argument("--reconnects", type=int, default=20)
    parser.add_argument("--outage-s", type=float, default=2.0, help="how long each cut lasts")
    parser.add_argument("--no-video", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.call_s, args.reconnects, args.outage_s, not args.no_video))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
