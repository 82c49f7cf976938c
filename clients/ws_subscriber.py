"""Print a call's events as they happen: `python -m clients.ws_subscriber CALL [--url ws://127.0.0.1:8080]`."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect


def describe(event: dict[str, Any]) -> str:
    who = f"{event.get('participant', '-')}"
    span = f"{event['t0']:7.2f}–{event['t1']:<7.2f}" if "t1" in event else " " * 15
    kind = event["type"]
    if event.get("final") is False and kind in ("utterance", "face"):
        kind += " (so far)"  # an utterance still being spoken; the closing event replaces it
    if kind.startswith("utterance"):
        detail = f"“{event['text']}”"
    elif kind == "reaction":
        moves = ", ".join(sorted({m["region"] for m in event["micro"]})) or "no movement"
        valence = "" if event["valence"] is None else f"  v={event['valence']:+.2f}"
        detail = f"to {event['speaker']}'s {event['utterance']}: {moves}{valence}"
    elif kind == "participant.leave":
        detail = f"left ({event['reason']})"
    elif kind == "participant.join":
        detail = f"joined with {', '.join(event['tracks'])}"
    elif kind == "emotion":
        labels = ", ".join(f"{lab['label']} {lab['score']:.2f}" for lab in event["labels"][:3])
        detail = f"{labels}  v={event['valence']:+.2f} a={event['arousal']:+.2f}"
    elif kind == "error":
        detail = f"{event['code']}: {event['message']}"
    else:
        detail = ""
    return f"#{event.get('seq', '-'):<5} {span} {who:>12}  {kind:<18} {detail}"


async def follow(url: str, call: str, types: str | None, token: str | None) -> None:
    query = f"call={call}" + (f"&types={types}" if types else "") + (f"&token={token}" if token else "")
    async with connect(f"{url}/events?{query}") as ws:
        async for text in ws:
            print(describe(json.loads(text)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("call")
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--types", help="comma-separated event types, e.g. utterance,emotion")
    parser.add_argument("--token", help="a token with subscribe rights (needed off loopback)")
    args = parser.parse_args()
    try:
        asyncio.run(follow(args.url, args.call, args.types, args.token))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
