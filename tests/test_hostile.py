"""Careless and hostile clients (issue 14) against a real server: each case answered, nothing left behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from websockets.asyncio.client import connect

from tests.conftest import TEST_CONFIG
from tests.harness import (
    EventLog,
    ServerProcess,
    assert_call_events_valid,
    events_url,
    run_cli,
)
from tests.media import SPEECH_RATE, Speech
from tests.peer import PatternTrack, Peer, SpeechTrack

pytestmark = pytest.mark.slow

PUBLISHER = "publisher-token-hostile-1"
READER = "reader-token-hostile-00001"
ADMIN = "administrator-token-hostile"
TOKENS = {PUBLISHER: ["publish"], READER: ["subscribe:*"], ADMIN: ["admin"]}
CONNECT_TIMEOUT_S = 4.0
SEND_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
PENDING_PER_CLIENT = 4
PENDING_TOTAL = 12
CONFIG: dict[str, Any] = {
    **TEST_CONFIG,
    "server": {"idle_timeout_s": IDLE_TIMEOUT_S},
    "webrtc": {
        **TEST_CONFIG["webrtc"],
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "pending_offers": PENDING_TOTAL,
        "pending_offers_per_client": PENDING_PER_CLIENT,
    },
    "hub": {"subscriber_queue": 32, "send_timeout_s": SEND_TIMEOUT_S},
    "auth": {"tokens": TOKENS},
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(CONFIG, tmp_path_factory.mktemp("hostile"))
    yield process
    process.stop()


def bearer(token: str = PUBLISHER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def threads_of(server: ServerProcess) -> int:
    return server.thread_count()


def rss_mb(server: ServerProcess) -> float:
    return server.read_proc("VmRSS", children=True) / 1024


# Threads that come and go by themselves (idle executor workers, a decoder's pool freed with its last frame); a
# leaked face analysis alone holds more than this (its worker and the landmarker's threads).
THREAD_MARGIN = 4


async def health(server: ServerProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as response:
            result: dict[str, Any] = await response.json()
            return result


async def wait_until_participants(server: ServerProcess, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await health(server))["participants"] != count:
        assert time.monotonic() < deadline, f"participants did not return to {count}"
        await asyncio.sleep(0.2)


async def never_connecting_offer(audio: int = 1, video: int = 1) -> str:
    """A real aiortc offer whose peer is closed at once: it never connects."""
    pc = RTCPeerConnection()
    for kind, count in (("audio", audio), ("video", video)):
        for _ in range(count):
            pc.addTransceiver(kind, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def post_offer(
    server: ServerProcess,
    sdp: str,
    call: str,
    participant: str,
    http: aiohttp.ClientSession | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"sdp": sdp, "type": "offer", "call": call, "participant": participant}
    own = http is None
    http = http or aiohttp.ClientSession()
    try:
        async with http.post(f"{server.url}/offer", json=body, headers=bearer()) as response:
            return response.status, await response.json(content_type=None), dict(response.headers)
    finally:
        if own:
            await http.close()


def log_since(server: ServerProcess, offset: int) -> str:
    return server.log_path.read_text()[offset:]


# -- 7: small ones -------------------------------------------------------------------------------
async def test_a_whip_body_that_is_not_utf8_is_a_400(hostile: ServerProcess) -> None:
    headers = {**bearer(), "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hostile.url}/whip/call-x", data=b"v=0\r\n\xff\xfe\xfa", headers=headers) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_sdp"


async def test_deeply_nested_json_is_an_error_reply_and_the_socket_stays_open(hostile: ServerProcess) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    async with connect(events_url(hostile, "call-nest", token=READER), max_size=None) as ws:
        await ws.send(nested)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "error" and reply["code"] == "bad_message"
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
    body = {"sdp": nested, "type": "offer", "call": "c", "participant": "p"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hostile.url}/offer", data=json.dumps(body), headers=bearer()) as r:
            assert r.status in (400, 415)
        payload = '{"sdp": ' * 50_000 + "1" + "}" * 50_000
        headers = {**bearer(), "Content-Type": "application/json"}
        async with http.post(f"{hostile.url}/offer", data=payload, headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_json"


async def test_an_offer_without_a_dtls_fingerprint_is_a_400(hostile: ServerProcess) -> None:
    sdp = await never_connecting_offer()
    stripped = "".join(line for line in sdp.splitlines(True) if not line.startswith("a=fingerprint"))
    status, body, _ = await post_offer(hostile, stripped, "call-fp", "fp")
    assert status == 400 and body["error"]["code"] == "bad_sdp"
    assert "fingerprint" in body["error"]["message"]
    assert (await health(hostile))["participants"] == 0


async def test_a_10kb_path_is_a_json_400_without_a_traceback(hostile: ServerProcess) -> None:
    offset = len(hostile.log_path.read_text())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hostile.url}/whip/{'a' * 10_000}", data="v=0", headers=bearer()) as r:
            assert r.status == 400 and r.content_type == "application/json"
            assert "error" in await r.json()
    await asyncio.sleep(0.3)
    assert "Traceback" not in log_since(hostile, offset)
    assert (await health(hostile))["status"] in ("ok", "degraded")


async def test_half_sent_requests_are_closed_after_the_header_timeout(hostile: ServerProcess) -> None:
    async def half_request() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        # EOF: the server hung up (the wait only guards against a test that would hang)
        return await asyncio.wait_for(reader.read(), IDLE_TIMEOUT_S + 60)

    answers = await asyncio.gather(*(half_request() for _ in range(50)))
    assert all(b"200 OK" not in answer for answer in answers)  # closed, never answered
    assert (await health(hostile))["participants"] == 0


# -- 5: tokens never in logs or errors ---------------------------------------------------------
async def test_tokens_are_not_written_to_the_log(hostile: ServerProcess) -> None:
    async with connect(events_url(hostile, "call-tok", token=READER)) as ws:
        await ws.send('{"type": "ping"}')
        await asyncio.wait_for(ws.recv(), 5)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hostile.url}/metrics?token={ADMIN}") as response:
            assert response.status == 200
            text = await response.text()
            assert all(token not in text for token in TOKENS)
        async with http.get(f"{hostile.url}/healthz?token={ADMIN}", headers=bearer(PUBLISHER)) as response:
            assert response.status == 200
    await asyncio.sleep(0.3)
    log = hostile.log_path.read_text()
    assert "/events?" in log and "/metrics?" in log  # the requests were logged, without their tokens
    assert not [token for token in TOKENS if token in log]


def test_a_config_error_does_not_name_the_token(tmp_path: Path) -> None:
    secret = "secret-token-that-must-not-leak"
    config = tmp_path / "config.yaml"
    config.write_text(f"auth:\n  tokens:\n    {secret}: publish\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2 and "auth.tokens" in result.stderr
    assert secret not in result.stderr + result.stdout


# -- 6: a participant id cannot be squatted ------------------------------------------------------
async def test_a_never_connected_offer_is_replaced_by_a_newer_one(
    hostile: ServerProcess, speech: Speech
) -> None:
    status, _, _ = await post_offer(hostile, await never_connecting_offer(), "call-squat", "alice")
    assert status == 200
    async with EventLog(events_url(hostile, "call-squat", token=READER)) as events:
        peer = Peer(hostile.url, "call-squat", "alice", token=PUBLISHER)
        await peer.join(SpeechTrack(speech.samples[: SPEECH_RATE * 2], SPEECH_RATE))
        await events.wait_for("participant.join", "alice", timeout=10)
        # the real alice is in: a second offer for her now is refused
        status, body, _ = await post_offer(hostile, await never_connecting_offer(), "call-squat", "alice")
        assert status == 409 and body["error"]["code"] == "participant_exists"
        await peer.leave()
        await events.wait_for("participant.leave", "alice", timeout=10)
    await wait_until_participants(hostile, 0, 10)


# -- 4: a subscriber that does not read is cut, and cut means closed ------------------------------
def raw_websocket(port: int, path: str) -> socket.socket:
    """A websocket client that never reads what it is sent: a small receive buffer, a finished handshake."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_text_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def flood_pings(sock: socket.socket, seconds: float) -> bool:
    """Send pings without reading for `seconds`; False once the server has hung up."""
    frame = masked_text_frame('{"type": "ping"}') * 64
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(frame)
        except TimeoutError:
            continue  # the server stopped reading us for a moment
        except OSError:
            return False
    return True


async def metric(server: ServerProcess, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics", headers=bearer(ADMIN)) as response:
            for line in (await response.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    return 0.0


async def test_a_subscriber_that_does_not_read_is_disconnected_within_the_send_timeout(
    hostile: ServerProcess,
) -> None:
    cut_before = await metric(hostile, "microemo_subscribers_cut_total")
    sock = raw_websocket(hostile.port, f"/events?call=call-slow&token={READER}")
    try:
        assert (await health(hostile))["subscribers"] == 1
        await asyncio.to_thread(flood_pings, sock, 4 * SEND_TIMEOUT_S)
        deadline = time.monotonic() + 3 * SEND_TIMEOUT_S + 2
        while (await health(hostile))["subscribers"] != 0:
            assert time.monotonic() < deadline, "the cut subscriber is still connected"
            await asyncio.sleep(0.1)
        assert await metric(hostile, "microemo_subscribers_cut_total") == cut_before + 1
        assert not await asyncio.to_thread(flood_pings, sock, 2.0)  # the connection is gone
    finally:
        sock.close()


async def test_a_subscriber_that_does_not_read_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    server = ServerProcess({**CONFIG, "hub": {"send_timeout_s": 3.0}}, tmp_path)  # queue: the default 256
    try:
        sock = raw_websocket(server.port, f"/events?call=call-stop&token={READER}")
        await asyncio.to_thread(flood_pings, sock, 1.0)  # the server's send buffer to this client is full
        server.process.send_signal(signal.SIGINT)
        # the server exits, cleanly, with the client still not reading; held up by it, it would not exit at all
        # (shutdown_timeout_s then the send timeout bound the close; the wait only guards against a hang)
        assert await asyncio.to_thread(server.process.wait, 60) == 0
        sock.close()
    finally:
        if server.process.poll() is None:
            server.stop()


# -- 1: several video tracks ---------------------------------------------------------------------
async def test_extra_video_tracks_are_declined_in_the_answer_and_cost_nothing(hostile: ServerProcess) -> None:
    threads, rss = threads_of(hostile), rss_mb(hostile)
    status, body, _ = await post_offer(hostile, await never_connecting_offer(video=10), "call-10v", "many")
    assert status == 200
    answer = body["sdp"].split("m=")[1:]
    assert [m.split()[0] for m in answer] == ["audio"] + ["video"] * 10
    assert ["a=inactive" in m for m in answer] == [False, False] + [True] * 9
    await wait_until_participants(hostile, 0, CONNECT_TIMEOUT_S + 10)
    await asyncio.sleep(1)
    assert threads_of(hostile) <= threads + THREAD_MARGIN
    assert rss_mb(hostile) < rss + 60


async def call_with_camera(
    server: ServerProcess, speech: Speech, call: str, name: str, *, screen_share: bool = False
) -> None:
    """A peer joins with a camera (and a screen share, offered after it: declined), speaks 2 s, leaves."""
    peer = Peer(server.url, call, name, token=PUBLISHER)
    if screen_share:
        peer.pc.addTrack(PatternTrack())
    await peer.join(SpeechTrack(speech.samples[: SPEECH_RATE * 2], SPEECH_RATE), PatternTrack())
    await asyncio.sleep(2)
    await peer.leave()
    await wait_until_participants(server, 0, 15)


async def test_a_camera_and_a_screen_share_leave_nothing_behind(
    hostile: ServerProcess, speech: Speech
) -> None:
    async def call_with_screen_share(name: str) -> None:
        await call_with_camera(hostile, speech, "call-share", name, screen_share=True)
        await asyncio.sleep(1)

    # the first calls of the process load what stays loaded (model files, the default executor's threads)
    for i in range(2):
        await call_with_screen_share(f"warm{i}")
    threads, rss = threads_of(hostile), rss_mb(hostile)
    for i in range(3):
        await call_with_screen_share(f"both{i}")
    assert threads_of(hostile) <= threads + THREAD_MARGIN
    assert rss_mb(hostile) < rss + 60


# -- 3: join/leave with video ---------------------------------------------------------------------
async def test_ten_joins_and_leaves_with_a_camera_grow_memory_by_at_most_5_percent(
    hostile: ServerProcess, speech: Speech
) -> None:
    for i in range(2):  # what the first calls load stays loaded
        await call_with_camera(hostile, speech, "call-cycles", f"warm{i}")
    await asyncio.sleep(1)
    rss = rss_mb(hostile)  # the server and its face-analysis process
    for i in range(10):
        await call_with_camera(hostile, speech, "call-cycles", f"cycle{i}")
    await asyncio.sleep(1)
    assert rss_mb(hostile) <= rss * 1.05


# -- 2: offers that never connect ----------------------------------------------------------------
async def test_an_offer_flood_is_refused_leaves_nothing_and_a_live_call_goes_on(
    hostile: ServerProcess, speech: Speech, event_validator: Any
) -> None:
    await wait_until_participants(hostile, 0, 15)
    threads, rss = threads_of(hostile), rss_mb(hostile)
    sdp = await never_connecting_offer()
    async with EventLog(events_url(hostile, "call-live", token=READER)) as events:
        peer = Peer(hostile.url, "call-live", "speaker", token=PUBLISHER)
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, PatternTrack())

        async def flood_from(address: str, count: int) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
            connector = aiohttp.TCPConnector(local_addr=(address, 0))
            async with aiohttp.ClientSession(connector=connector) as http:
                return await asyncio.gather(
                    *(
                        post_offer(hostile, sdp, "flood-" + address.replace(".", "-"), f"p{i}", http)
                        for i in range(count)
                    )
                )

        answers = [
            a
            for batch in await asyncio.gather(*(flood_from(f"127.0.0.{n}", 20) for n in range(1, 6)))
            for a in batch
        ]
        statuses = sorted(status for status, _, _ in answers)
        accepted = statuses.count(200)
        assert accepted <= PENDING_TOTAL  # the live call's connected session is not pending
        assert set(statuses) == {200, 429, 503}, statuses
        for status, body, headers in answers:
            if status != 200:
                assert int(headers["Retry-After"]) >= 1
                assert body["error"]["code"] in ("too_many_offers", "busy")

        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.1)
        await events.wait_for("utterance", "speaker", count=len(speech.spans), timeout=30)
        await peer.leave()
        await events.wait_for("participant.leave", "speaker", timeout=15)
    assert_call_events_valid(events.messages, event_validator)
    assert len(events.of_type("utterance")) == len(speech.spans)

    await wait_until_participants(hostile, 0, CONNECT_TIMEOUT_S + 15)
    await asyncio.sleep(1)
    assert threads_of(hostile) <= threads + THREAD_MARGIN
    assert rss_mb(hostile) < rss + 80
    # and the server takes new offers again
    status, _, _ = await post_offer(hostile, sdp, "call-after", "p")
    assert status == 200
