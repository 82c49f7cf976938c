"""Tokens and rights (API.md) on every route, and WHIP ingest (RFC 9725) with a real aiortc client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url, run_cli
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack, WhipPeer

pytestmark = pytest.mark.slow

PUBLISHER = "publisher-token-0001"
CALL_A_READER = "reader-of-call-a-001"
ANY_READER = "reader-of-any-call-1"
ADMIN = "administrator-token-1"
TOKENS = {
    PUBLISHER: ["publish"],
    CALL_A_READER: ["subscribe:call-a"],
    ANY_READER: ["subscribe:*"],
    ADMIN: ["admin"],
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess({**TEST_CONFIG, "auth": {"tokens": TOKENS}}, tmp_path_factory.mktemp("secured"))
    yield process
    process.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(method: str, url: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
            return response.status, await response.json(content_type=None)


async def test_publishing_needs_a_token_with_publish_right(secured: ServerProcess) -> None:
    bad_offer = {"sdp": "x", "type": "offer", "call": "call-a", "participant": "p"}
    status, body = await status_of("POST", f"{secured.url}/offer", json=bad_offer)
    assert status == 401 and body["error"]["code"] == "unauthorized"  # type: ignore[index]
    status, _ = await status_of(
        "POST", f"{secured.url}/offer", json=bad_offer, headers=bearer("wrong-token-00000000")
    )
    assert status == 401
    status, body = await status_of("POST", f"{secured.url}/offer", json=bad_offer, headers=bearer(ANY_READER))
    assert status == 403 and body["error"]["code"] == "forbidden"  # type: ignore[index]
    # the publisher gets past auth to the SDP check
    status, body = await status_of("POST", f"{secured.url}/offer", json=bad_offer, headers=bearer(PUBLISHER))
    assert status == 400 and body["error"]["code"] == "bad_sdp"  # type: ignore[index]


async def ws_status(url: str) -> int:
    try:
        async with connect(url) as ws:
            await ws.send('{"type": "ping"}')
            await asyncio.wait_for(ws.recv(), 5)
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_subscribe_rights_per_call_any_call_and_admin(secured: ServerProcess) -> None:
    base = f"ws://127.0.0.1:{secured.port}/events"
    assert await ws_status(f"{base}?call=call-a") == 401
    assert await ws_status(f"{base}?call=call-a&token={CALL_A_READER}") == 101
    assert await ws_status(f"{base}?call=call-b&token={CALL_A_READER}") == 403
    assert await ws_status(f"{base}?call=call-b&token={ANY_READER}") == 101
    assert await ws_status(f"{base}?token={ANY_READER}") == 403  # every call at once: admin only
    assert await ws_status(f"{base}?token={ADMIN}") == 101
    assert await ws_status(f"{base}?call=call-a&token={PUBLISHER}") == 403


async def test_metrics_need_admin_and_health_is_open(secured: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{secured.url}/metrics", headers=bearer(ANY_READER)) as response:
            assert response.status == 403
        async with http.get(f"{secured.url}/metrics", headers=bearer(ADMIN)) as response:
            assert response.status == 200
            assert "microemo_participants" in await response.text()
        async with http.get(f"{secured.url}/healthz") as response:
            assert (await response.json())["auth"] is True


def test_refuses_to_start_off_loopback_without_tokens(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  host: 0.0.0.0\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "auth.tokens" in result.stderr and "0.0.0.0" in result.stderr


async def test_whip_ingest_transcribes_and_delete_ends_the_session(
    secured: ServerProcess, speech: Speech, event_validator
) -> None:
    url = events_url(secured, "call-whip", token=ANY_READER)
    async with EventLog(url) as events:
        peer = WhipPeer(secured.url, "call-whip", "obs", token=PUBLISHER)
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio)
        assert peer.location == f"/whip/call-whip/{peer.session}"
        await events.wait_for("utterance", count=2, timeout=40)
        assert await peer.delete() == 200
        await events.wait_for("participant.leave", timeout=10)
        await peer.leave()
    assert_call_events_valid(events.messages, event_validator)
    assert events.messages[-1]["reason"] == "whip_delete"
    assert {m["participant"] for m in events.messages} == {"obs"}
    # the session is gone: deleting it again is a 404, and without a token a 401
    status, _ = await status_of("DELETE", f"{secured.url}{peer.location}", headers=bearer(PUBLISHER))
    assert status == 404
    status, _ = await status_of("DELETE", f"{secured.url}{peer.location}")
    assert status == 401


async def test_whip_refuses_wrong_content_type_and_unsupported_patch(secured: ServerProcess) -> None:
    headers = {**bearer(PUBLISHER), "Content-Type": "application/json"}
    status, body = await status_of("POST", f"{secured.url}/whip/call-x", data="{}", headers=headers)
    assert status == 415
    status, _ = await status_of(
        "POST", f"{secured.url}/whip/bad%20call", data="v=0", headers=bearer(PUBLISHER)
    )
    assert status == 400
    status, _ = await status_of("PATCH", f"{secured.url}/whip/call-x/abc", headers=bearer(PUBLISHER))
    assert status == 405


async def test_offer_with_publisher_token_streams(secured: ServerProcess, speech: Speech) -> None:
    async with EventLog(events_url(secured, "call-a", token=CALL_A_READER)) as events:
        peer = Peer(secured.url, "call-a", "erin", token=PUBLISHER)
        await peer.join(SpeechTrack(speech.samples[: SPEECH_RATE * 2], SPEECH_RATE))
        await events.wait_for("participant.join", timeout=10)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=10)
