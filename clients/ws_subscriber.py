"""Print a call's events as they happen: `python -m clients.ws_subscriber CALL [--url ws://127.0.0.1:8080]`.

It rides out dropped connections (clients/microemo.py): it reconnects and resumes after the last event printed."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from clients.microemo import MicroEmo


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


async def follow(url: str, call: str, types: str | None, token: str | None, since: int | None) -> None:
    client = MicroEmo(url, call, token=token, types=types.split(",") if types else None, since=since)
    async for event in client.events():
        print(describe(event.data), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("call")
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--types", help="comma-separated event types, e.g. utterance,emotion")
    parser.add_argument("--token", help="a token with subscribe rights (needed off loopback)")
    parser.add_argument(
        "--since",
        type=int,
        help="first the call's held events after this seq (0: all held); default: from now",
    )
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("clients.microemo").setLevel(logging.INFO)  # its reconnects, on stderr
    try:
        asyncio.run(follow(args.url, args.call, args.types, args.token, args.since))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
