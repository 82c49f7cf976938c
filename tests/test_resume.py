"""Subscribers that resume: the hub keeps each call's recent events (by count and age), a websocket subscriber
that comes back with `since=` gets what it missed and then live events, each seq once; a gap is told, not hidden."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import aiohttp
import jsonschema
import pytest

from clients.microemo import Event, MicroEmo
from stream.events import SpeechStart, UtteranceEvent
from stream.publish.history import CallHistory
from stream.publish.hub import Hub
from tests.conftest import SENTENCES, TEST_CONFIG
from tests.harness import EventLog, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech, compose
from tests.peer import stream_speech
from tests.proxy import CuttableProxy


def speech(call: str, t: float = 0.0) -> SpeechStart:
    return SpeechStart(call=call, participant="p", t0=t)


def interim(call: str) -> UtteranceEvent:
    return UtteranceEvent(
        call=call,
        participant="p",
        utterance="u1",
        t0=0,
        t1=1,
        text="so far",
        words=(),
        lang="en",
        final=False,
    )


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages if "seq" in m]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the history: bounded by count and age --------------------------------------------------------
def test_history_keeps_the_last_events_of_each_call() -> None:
    history = CallHistory(max_events=3, max_age_s=60)
    for seq in range(1, 6):
        history.record({"call": "a", "seq": seq})
    replay = history.after("a", since=3, latest=5)
    assert (seqs(replay.messages), replay.first_seq, replay.missing) == ([4, 5], 4, False)
    gone = history.after("a", since=1, latest=5)
    assert (seqs(gone.messages), gone.first_seq, gone.missing) == ([3, 4, 5], 3, True)


def test_history_holds_no_event_older_than_its_age() -> None:
    clock = Clock()
    history = CallHistory(max_events=100, max_age_s=10, clock=clock)
    history.record({"call": "a", "seq": 1})
    clock.now += 8
    history.record({"call": "a", "seq": 2})
    clock.now += 5  # seq 1 is 13 s old, seq 2 is 5 s old
    replay = history.after("a", since=0, latest=2)
    assert (seqs(replay.messages), replay.first_seq, replay.missing) == ([2], 2, True)


def test_a_calls_history_goes_after_its_last_event() -> None:
    clock = Clock()
    history = CallHistory(max_events=100, max_age_s=10, clock=clock)
    for call in range(1000):  # many short calls, all over
        history.record({"call": f"c{call}", "seq": 1})
    clock.now += 11
    history.record({"call": "live", "seq": 1})
    assert (history.call_count, history.event_count) == (1, 1)


def test_since_ahead_of_the_call_is_a_gap_from_what_is_held() -> None:
    history = CallHistory(max_events=10, max_age_s=60)
    for seq in (1, 2):
        history.record({"call": "a", "seq": seq})
    replay = history.after("a", since=40, latest=2)  # a numbering this server never made: it restarted
    assert (seqs(replay.messages), replay.first_seq, replay.missing) == ([1, 2], 1, True)


# -- the hub: replay, then live, gapless ----------------------------------------------------------
async def test_a_subscriber_resuming_gets_what_it_missed_then_live_events() -> None:
    hub = Hub()
    for i in range(5):
        hub.publish(speech("a", float(i)))
    hub.publish(speech("b"))
    sub = hub.subscribe("a", since=2)
    assert seqs(await asyncio.wait_for(sub.next_batch(), 1)) == [3, 4, 5]
    hub.publish(speech("a"))
    assert seqs(await asyncio.wait_for(sub.next_batch(), 1)) == [6]


async def test_resuming_at_the_latest_seq_is_live_only_and_no_error() -> None:
    hub = Hub()
    hub.publish(speech("a"))
    sub = hub.subscribe("a", since=1)
    assert sub.queued == 0
    hub.publish(speech("a"))
    assert seqs(await asyncio.wait_for(sub.next_batch(), 1)) == [2]


async def test_the_replay_keeps_the_subscribers_types_and_schema_version() -> None:
    hub = Hub()
    hub.publish(speech("a"))  # 1
    hub.publish(interim("a"))  # 2: no such event in schema version 1
    hub.publish(speech("a"))  # 3
    typed = hub.subscribe("a", types=["utterance"], since=0)
    assert seqs(await typed.next_batch()) == [2]
    old = hub.subscribe("a", version=1, since=0)
    batch = await old.next_batch()
    assert seqs(batch) == [1, 3] and {m["v"] for m in batch} == {1}


async def test_a_gap_is_told_first_with_the_seq_the_stream_goes_on_from() -> None:
    hub = Hub(history_events=3)
    for _ in range(6):
        hub.publish(speech("a"))
    batch = await hub.subscribe("a", since=1).next_batch()
    error, *replay = batch
    assert (error["type"], error["code"], error["first_seq"]) == ("error", "history_gone", 4)
    assert "seq" not in error and "starts at seq 4" in error["message"]
    assert seqs(replay) == [4, 5, 6]


async def test_a_long_replay_is_not_taken_for_a_slow_subscriber() -> None:
    hub = Hub(subscriber_queue=5, history_events=100)
    for _ in range(50):
        hub.publish(speech("a"))
    sub = hub.subscribe("a", since=0)
    hub.publish(speech("a"))
    assert not sub.cut_off
    assert seqs(await sub.next_batch()) == list(range(1, 52))


def test_since_needs_a_call() -> None:
    with pytest.raises(ValueError, match="needs a call"):
        Hub().subscribe(None, since=0)


# -- the client and the server, for real ----------------------------------------------------------
def events_of(client_events: list[Event]) -> list[int]:
    return [e.seq for e in client_events if e.seq is not None]


async def metric(server: ServerProcess, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    return sum(float(value) for value in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def collect(client: MicroEmo, into: list[Event]) -> None:
    async for event in client.events():
        into.append(event)


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def resume_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(TEST_CONFIG, tmp_path_factory.mktemp("resume"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def small_history_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {**TEST_CONFIG, "hub": {"history_events": 3}, "video": {"enabled": False}}
    process = ServerProcess(config, tmp_path_factory.mktemp("small-history"))
    yield process
    process.stop()


@pytest.mark.slow
async def test_every_seq_arrives_once_across_connections_cut_mid_call(resume_server: ServerProcess) -> None:
    """A subscriber behind a network that goes away four times during a call (each time for as long as the call
    takes to publish at least one event it cannot receive) gets every event of the call exactly once, in order."""
    call = "call-resume"
    long_speech = compose(SENTENCES * 2, lead_s=0.6, pause_s=1.2, tail_s=1.2)
    proxy = CuttableProxy(resume_server.port)
    await proxy.start()
    client = MicroEmo(f"ws://127.0.0.1:{proxy.port}", call, backoff_min_s=0.05, backoff_max_s=0.5)
    received: list[Event] = []
    replayed_before = await metric(resume_server, "microemo_events_replayed_total")
    async with EventLog(events_url(resume_server, call)) as reference:
        following = asyncio.create_task(collect(client, received))
        await wait_until(lambda: client.connections == 1, 10, "the client did not connect")
        talking = asyncio.create_task(
            stream_speech(resume_server.url, call, "kim", long_speech.samples, SPEECH_RATE)
        )
        await reference.wait_for("participant.join")
        try:
            while proxy.cuts < 4 and not talking.done():
                await wait_until(
                    lambda: client.last_seq == seqs(reference.messages)[-1], 30, "the client fell behind"
                )
                await proxy.cut()
                seen = len(reference.messages)
                # down until the call has published something this client cannot receive
                await wait_until(lambda: len(reference.messages) > seen or talking.done(), 30, "no event")  # noqa: B023
                await proxy.start()
            await talking
            await reference.wait_for("participant.leave", timeout=60)
            await wait_until(
                lambda: client.last_seq == seqs(reference.messages)[-1], 30, "the client did not catch up"
            )
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await proxy.close()
    every_seq = seqs(reference.messages)
    assert every_seq == list(range(1, len(every_seq) + 1))  # the reference saw the whole call
    assert proxy.cuts == 4
    assert events_of(received) == every_seq
    assert not [e for e in received if e.type == "error"]
    assert client.connections == 5 and client.duplicates == 0
    assert [e.data for e in received] == reference.messages
    assert await metric(resume_server, "microemo_events_replayed_total") >= replayed_before + 4


@pytest.mark.slow
async def test_asking_for_events_no_longer_held_yields_the_gap_first(
    small_history_server: ServerProcess, speech: Speech, event_validator: jsonschema.Draft202012Validator
) -> None:
    call = "call-gone"
    async with EventLog(events_url(small_history_server, call)) as reference:
        await stream_speech(small_history_server.url, call, "kim", speech.samples, SPEECH_RATE, video=False)
        await reference.wait_for("participant.leave", timeout=60)
    latest = seqs(reference.messages)[-1]
    assert latest > 4
    client = MicroEmo(f"ws://127.0.0.1:{small_history_server.port}", call, since=0)
    received: list[Event] = []
    async with aclosing(client.events()) as events:
        async for event in events:
            received.append(event)
            if event.seq == latest:
                break
    gap, *rest = received
    assert gap.gap and gap.data["first_seq"] == latest - 2
    event_validator.validate(gap.data)
    assert events_of(rest) == [latest - 2, latest - 1, latest]
    assert client.last_seq == latest
    # Without since=, the handshake names the seq the live events follow: a reconnect resumes from there.
    live = MicroEmo(f"ws://127.0.0.1:{small_history_server.port}", call)
    following = asyncio.create_task(collect(live, []))
    await wait_until(lambda: live.connections == 1, 10, "the client did not connect")
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    assert live.last_seq == latest


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("call=a&since=-1", "bad_since"),
        ("call=a&since=1.5", "bad_since"),
        ("call=a&since=", "bad_since"),
        ("since=3", "since_needs_call"),
    ],
)
async def test_a_bad_since_is_refused_before_the_upgrade(
    small_history_server: ServerProcess, query: str, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{small_history_server.url}/events?{query}") as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == code
