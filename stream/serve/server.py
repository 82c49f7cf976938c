"""The aiohttp app: routes and wiring only (ingest, events, schema, health, metrics, page); no analysis here."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.sdp import SessionDescription
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.audio.moonshine import make_interim_transcriber
from model.audio.vad import SileroModel
from model.audio.whisper import Transcriber, make_transcriber
from model.face.landmarks import make_face_analyzer
from stream import metrics
from stream.config import Settings, VideoSettings
from stream.emotion.emotion_service import EmotionService
from stream.emotion.reactions import Listeners
from stream.events import EVENT_TYPES, OLDEST_VERSION, SCHEMA_PATH, SCHEMA_VERSION, is_valid_id, reply
from stream.faces.analysis import FACE_HEALTH
from stream.faces.face_process import FaceProcesses
from stream.overload import Shedder, watch_loop_lag
from stream.pipeline import Cutoff
from stream.publish.hub import Hub, Subscriber
from stream.publish.mqtt import MqttBridge
from stream.serve import patches
from stream.serve.admission import Admission
from stream.serve.auth import Authorizer, bearer_token
from stream.serve.errors import ApiError
from stream.serve.media_stream import PhoneStream, PhoneTrack
from stream.serve.offers import OfferLimits
from stream.serve.webrtc import rtc_configuration
from stream.session import ParticipantSession, PipelineParts, build_session
from stream.transcribe.asr_service import TranscriptionService

log = logging.getLogger(__name__)
WEB_ROOT = Path(__file__).resolve().parents[2] / "clients" / "web"
ID_RULE = "[A-Za-z0-9_-]{1,64}"


@dataclass
class Services:
    settings: Settings
    auth: Authorizer
    hub: Hub
    vad_model: SileroModel
    asr: TranscriptionService
    offers: OfferLimits
    mqtt: MqttBridge | None = None
    emotion: EmotionService | None = None
    admission: Admission = field(default_factory=lambda: Admission(None, 5))
    sessions: dict[str, ParticipantSession] = field(default_factory=dict)  # by session id
    # offers admitted and being answered, by session id: (call, participant). Counted with the sessions from the
    # offer's start, before its first await, so that concurrent offers cannot all see the same free place or id.
    reserved: dict[str, tuple[str, str]] = field(default_factory=dict)
    listeners: Listeners = field(default_factory=Listeners)  # who else in each call may react
    shedder: Shedder | None = None  # what overload sheds, from the event loop's lag (None: nothing)
    loop_lag: asyncio.Task[None] | None = None  # measures that lag (in /metrics) and tells the shedder
    face_processes: FaceProcesses | None = None  # where the face models run (None: in the analysis threads)
    # each events websocket with its connection, aborted when the client will not take a close frame
    websockets: dict[web.WebSocketResponse, asyncio.Transport | None] = field(default_factory=dict)
    cutoff: Cutoff = field(default_factory=Cutoff)  # cut when shutdown stops waiting for the analysis

    def forget(self, session: ParticipantSession) -> None:
        self.sessions.pop(session.id, None)
        self.offers.settled(session.id)
        self.count()
        if self.emotion is not None and not any(s.call == session.call for s in self.sessions.values()):
            self.emotion.end_call(session.call)  # the call is over: its visual context goes

    def count(self) -> None:
        metrics.PARTICIPANTS.set(len(self.sessions))
        metrics.CALLS.set(len({s.call for s in self.sessions.values()}))

    @property
    def participant_count(self) -> int:
        """Participants holding a place on this node: live sessions and offers being answered."""
        return len(self.sessions) + len(self.reserved)

    @property
    def call_count(self) -> int:
        return len({s.call for s in self.sessions.values()} | {call for call, _ in self.reserved.values()})

    def find(self, call: str, participant: str) -> ParticipantSession | None:
        for session in self.sessions.values():
            if session.call == call and session.participant == participant and not session.closed:
                return session
        return None


SERVICES = web.AppKey("services", Services)


# -- errors --------------------------------------------------------------------------------------
def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error")


def valid_id(value: object, name: str) -> str:
    if not is_valid_id(value):
        raise ApiError(400, f"bad_{name}", f"'{name}' must match {ID_RULE}")
    return str(value)


# -- ingest: POST /offer (JSON) ------------------------------------------------------------------
async def read_offer(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "POST /offer takes application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_json", "body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    for key in ("sdp", "type", "call", "participant"):
        if key not in body:
            raise ApiError(400, "missing_field", f"missing field '{key}'")
    if body["type"] != "offer":
        raise ApiError(400, "bad_type", "field 'type' must be 'offer'")
    if not isinstance(body["sdp"], str) or not body["sdp"].strip():
        raise ApiError(400, "bad_sdp", "field 'sdp' must be a non-empty string")
    valid_id(body["call"], "call")
    valid_id(body["participant"], "participant")
    return body


async def offer(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.auth.require_publish(request)
    body = await read_offer(request)
    # The balancer pins a call by `?call=` (it cannot read the body): a different call would land elsewhere.
    if request.query.get("call", body["call"]) != body["call"]:
        raise ApiError(400, "call_mismatch", "'?call=' in the URL and 'call' in the body differ")
    session, answer = await start_session(
        services, body["call"], body["participant"], body["sdp"], request.remote or "-"
    )
    return web.json_response(
        {
            "sdp": answer.sdp,
            "type": answer.type,
            "call": session.call,
            "participant": session.participant,
            "session": session.id,
        }
    )


# -- ingest: WHIP (RFC 9725) ---------------------------------------------------------------------
async def whip_offer(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.auth.require_publish(request)
    call = valid_id(request.match_info["call"], "call")
    participant = valid_id(request.query.get("participant") or f"whip-{uuid.uuid4().hex[:8]}", "participant")
    if request.content_type != "application/sdp":
        raise ApiError(415, "unsupported_media_type", "WHIP takes an application/sdp offer")
    try:
        sdp = (await request.read()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_sdp", "the SDP offer is not UTF-8 text") from exc
    if not sdp.strip():
        raise ApiError(400, "bad_sdp", "empty SDP offer")
    session, answer = await start_session(services, call, participant, sdp, request.remote or "-")
    return web.Response(
        status=201,
        text=answer.sdp,
        content_type="application/sdp",
        headers={"Location": f"/whip/{call}/{session.id}", "X-Participant": participant},
    )


async def whip_delete(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.auth.require_publish(request)
    session = services.sessions.get(request.match_info["session"])
    if session is None or session.call != request.match_info["call"]:
        raise ApiError(404, "unknown_session", "no such WHIP session")
    await session.close("whip_delete")
    return web.json_response({"session": session.id, "state": "closed"})


async def whip_patch(request: web.Request) -> web.Response:
    # RFC 9725 §4.3.1: a server that does not support trickle ICE or ICE restarts answers 405.
    raise ApiError(
        405, "not_supported", "trickle ICE and ICE restarts are not supported; send a complete offer"
    )


# -- ingest: phone lines (Twilio Media Streams over a websocket) ----------------------------------
async def phone_media(request: web.Request) -> web.StreamResponse:
    """GET /media/{call}: a websocket of one phone call's legs (stream/serve/media_stream.py). The token comes
    at the handshake as for WHIP, or in the `start` message's customParameters (Twilio sends no headers)."""
    services = request.app[SERVICES]
    call = valid_id(request.match_info["call"], "call")
    authorized = not services.auth.enabled or bearer_token(request) is not None
    if authorized:
        services.auth.require_publish(request)
    services.admission.admit(services.participant_count)
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=services.settings.phone.max_message_bytes)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "GET /media/{call} is a websocket endpoint")
    await ws.prepare(request)
    services.websockets[ws] = request.transport
    try:
        await PhoneStream(
            ws,
            call,
            lambda legs: open_phone_legs(services, call, legs),
            reorder_window=services.settings.phone.reorder_chunks,
            authorized=authorized,
            check_token=services.auth.require_publish_token,
        ).run()
    finally:
        services.websockets.pop(ws, None)
    return ws


def open_phone_legs(
    services: Services, call: str, legs: Sequence[tuple[PhoneTrack, str]]
) -> list[ParticipantSession]:
    """A participant per leg of a phone stream, audio only, or ApiError (full, draining, an id taken). No await:
    admission and ids are decided and the sessions registered at once, as an offer's are before its first."""
    services.admission.admit(services.participant_count + len(legs) - 1)
    for _, participant in legs:
        if services.find(call, participant) is not None or (call, participant) in services.reserved.values():
            raise ApiError(
                409, "participant_exists", f"participant '{participant}' is already in call '{call}'"
            )
    parts = pipeline_parts(services, services.settings.video.model_copy(update={"enabled": False}))
    sessions = []
    for track, participant in legs:
        session_id = uuid.uuid4().hex[:16]
        session = build_session(
            parts, call=call, participant=participant, session_id=session_id, on_closed=services.forget
        )
        session.add_track(track)
        services.sessions[session_id] = session
        session.connected()
        sessions.append(session)
    services.count()
    return sessions


# -- sessions ------------------------------------------------------------------------------------
# What aiortc raises for an offer it cannot parse or use (its SDP parser, its checks of the description).
OFFER_ERRORS = (ValueError, LookupError, InvalidAccessError, InvalidStateError)
# A participant sends a microphone and a camera (a screen share, ...): more media sections than this is no call.
MAX_MEDIA_SECTIONS = 16


class BadOffer(Exception):
    """The SDP offer cannot be answered: the client's fault, a 400."""


async def start_session(
    services: Services, call: str, participant: str, sdp: str, client: str
) -> tuple[ParticipantSession, RTCSessionDescription]:
    """Answer an SDP offer with a new ParticipantSession; a bad offer is a 400, an internal failure a 500, and
    neither leaves anything behind. A full or draining node answers 503 before anything is set up; too many
    offers from `client` (its address), or in all, not yet connected: 429 or 503 (stream/serve/offers.py)."""
    # Admission and identity are decided here, before the first await: concurrent offers see each other's places.
    services.admission.admit(services.participant_count)
    existing = services.find(call, participant)
    if (call, participant) in services.reserved.values() or (
        existing is not None
        and (existing.pc is None or existing.pc.connectionState not in ("new", "connecting"))
    ):
        raise ApiError(409, "participant_exists", f"participant '{participant}' is already in call '{call}'")
    session_id = uuid.uuid4().hex[:16]
    services.offers.admit(client, session_id)  # pending from here until its peer connects or it closes
    services.reserved[session_id] = (call, participant)  # until its session is registered, or the offer fails
    try:
        if existing is not None:
            # An offer whose peer never connected holds no one's place: a newer offer (with the publish right
            # too) takes it, so that no one can squat a participant id for connect_timeout_s.
            existing.log.info("session %s, never connected, replaced by a newer offer", existing.id)
            await existing.close("replaced")
        return await open_session(services, call, participant, session_id, sdp)
    except BaseException:
        services.offers.settled(session_id)
        raise
    finally:
        services.reserved.pop(session_id, None)


async def open_session(
    services: Services, call: str, participant: str, session_id: str, sdp: str
) -> tuple[ParticipantSession, RTCSessionDescription]:
    """The peer connection and session of an admitted offer, answered; dropped if it has not connected in time."""
    pc = RTCPeerConnection(rtc_configuration(services.settings.webrtc))
    try:
        session = new_session(services, call, participant, session_id, pc)
    except Exception as exc:
        await pc.close()
        raise internal_error(call, participant, session_id, exc) from exc
    try:
        await answer_offer(pc, session, sdp, services.settings.webrtc.audio_prefetch_frames)
    except BadOffer as exc:
        await session.close("error")
        raise ApiError(400, "bad_sdp", f"cannot use this SDP offer: {exc}") from exc
    except Exception as exc:
        error = internal_error(call, participant, session_id, exc)
        await session.close("error")
        raise error from exc
    services.sessions[session.id] = session
    services.count()
    asyncio.get_running_loop().call_later(
        services.settings.webrtc.connect_timeout_s, _expire_unconnected, weakref.ref(session)
    )
    session.log.info("session %s answered with tracks %s", session.id, session.tracks)
    return session, pc.localDescription


def pipeline_parts(services: Services, video: VideoSettings) -> PipelineParts:
    return PipelineParts(
        services.hub,
        services.vad_model,
        services.asr,
        services.settings.audio,
        video,
        services.emotion,
        services.listeners,
        services.shedder,
        services.face_processes,
        services.cutoff,
    )


def new_session(
    services: Services, call: str, participant: str, session_id: str, pc: RTCPeerConnection
) -> ParticipantSession:
    """A ParticipantSession wired to its peer connection's tracks and states."""
    parts = pipeline_parts(services, services.settings.video)
    session = build_session(
        parts, call=call, participant=participant, session_id=session_id, pc=pc, on_closed=services.forget
    )
    pc.on("track", session.add_track)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            services.offers.settled(session_id)
            session.connected()
        elif pc.connectionState in ("failed", "closed"):
            session.close("connection_failed" if pc.connectionState == "failed" else "hangup")

    return session


async def answer_offer(pc: RTCPeerConnection, session: ParticipantSession, sdp: str, prefetch: int) -> None:
    """Set the offer and our answer on `pc`; BadOffer when the offer is at fault, anything else is ours."""
    check_offer(sdp)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except OFFER_ERRORS as exc:
        raise BadOffer(exc) from exc
    patches.tune_audio_receivers(pc, prefetch)
    if not session.tracks:
        raise BadOffer("the offer carries no audio or video track")
    decline_extra_tracks(pc)
    try:
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except OFFER_ERRORS as exc:
        raise BadOffer(exc) from exc


def check_offer(sdp: str) -> None:
    """What aiortc accepts in an offer but fails on later (after the answer): BadOffer names it."""
    try:
        description = SessionDescription.parse(sdp)
    except (*OFFER_ERRORS, AssertionError) as exc:  # its parser asserts on some malformed lines
        raise BadOffer(str(exc) or "malformed SDP") from exc
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise BadOffer(f"{len(description.media)} media sections; at most {MAX_MEDIA_SECTIONS} are taken")
    for index, media in enumerate(description.media):
        if media.kind in ("audio", "video") and (media.dtls is None or not media.dtls.fingerprints):
            raise BadOffer(f"media section {index} ({media.kind}) has no DTLS fingerprint (a=fingerprint)")


def decline_extra_tracks(pc: RTCPeerConnection) -> None:
    """Only a participant's first audio and first video track are analysed (session.py); the answer declines
    the others (a=inactive), so their media is never sent, received or decoded."""
    seen: set[str] = set()
    for transceiver in pc.getTransceivers():
        if transceiver.kind in seen:
            transceiver.direction = "inactive"
        seen.add(transceiver.kind)


def internal_error(call: str, participant: str, session_id: str, exc: Exception) -> ApiError:
    """Log an unexpected failure to set up a session with its call, and the 500 that tells the client."""
    logging.LoggerAdapter(log, {"call": call, "participant": participant}).error(
        "setting up session %s failed", session_id, exc_info=exc
    )
    return ApiError(
        500, "internal", f"internal error while setting up session {session_id}; see the server log"
    )


def _expire_unconnected(ref: weakref.ref[ParticipantSession]) -> None:
    # A weak reference: the timer must not keep a gone session (its peer connection, its analysis) alive.
    session = ref()
    if session is None or session.closed or session.pc is None:
        return
    if session.pc.connectionState not in ("connected", "closed"):
        session.close("connect_timeout")


# -- events websocket ----------------------------------------------------------------------------
def parse_types(raw: str | None) -> frozenset[str] | None:
    if not raw:
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = types - set(EVENT_TYPES)
    if unknown:
        raise ApiError(400, "bad_types", f"unknown event types: {', '.join(sorted(unknown))}")
    return types


def parse_version(raw: str | None) -> int:
    """The schema version a subscriber reads (`?v=`): the current one unless it asks for an older one."""
    if raw is None:
        return SCHEMA_VERSION
    if not raw.isdigit() or not OLDEST_VERSION <= int(raw) <= SCHEMA_VERSION:
        raise ApiError(400, "bad_version", f"v must be {OLDEST_VERSION}..{SCHEMA_VERSION}")
    return int(raw)


# On the websocket handshake of a one-call subscription: the call's last seq when it was subscribed. The live events
# of the connection come after it, so a client that connected without since= knows where to resume from.
LAST_SEQ_HEADER = "X-Last-Seq"


def parse_since(raw: str | None, call: str | None) -> int | None:
    """`?since=<seq>`: first the held events of the call after this seq, then live ones (README "Resuming")."""
    if raw is None:
        return None
    if call is None:
        raise ApiError(400, "since_needs_call", "since= resumes the events of one call: give call= too")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
        raise ApiError(400, "bad_since", "since must be a seq number, an integer >= 0")
    return int(raw)


async def events(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    call = request.query.get("call")
    if call is not None:
        valid_id(call, "call")
    services.auth.require_subscribe(request, call)
    types = parse_types(request.query.get("types"))
    version = parse_version(request.query.get("v"))
    since = parse_since(request.query.get("since"), call)
    ws = web.WebSocketResponse(heartbeat=20.0)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "GET /events is a websocket endpoint")
    # Subscribed before the handshake (what is published meanwhile waits in its queue), so that the header names
    # exactly the seq its live events follow; the replay and the registration are one step (hub.subscribe).
    subscriber = services.hub.subscribe(call, types, version, since)
    if call is not None:
        ws.headers[LAST_SEQ_HEADER] = str(services.hub.latest_seq(call))
    try:
        await ws.prepare(request)
    except BaseException:
        services.hub.unsubscribe(subscriber)
        raise
    services.websockets[ws] = request.transport
    writer = asyncio.create_task(
        _write_events(ws, request.transport, subscriber, services.settings.hub.send_timeout_s)
    )
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                subscriber.offer(_answer(message.data))
            elif message.type == WSMsgType.BINARY:
                subscriber.offer(reply("error", time.time(), code="bad_message", message="send JSON text"))
            if writer.done():
                break
    finally:
        services.hub.unsubscribe(subscriber)
        services.websockets.pop(ws, None)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await hang_up(ws, request.transport, services.settings.hub.send_timeout_s)
    return ws


def _answer(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return reply("error", time.time(), code="bad_message", message='not JSON; send {"type": "ping"}')
    if isinstance(message, dict) and message.get("type") == "ping":
        return reply("pong", time.time())
    return reply("error", time.time(), code="bad_message", message="unknown message; only ping is understood")


async def _write_events(
    ws: web.WebSocketResponse,
    transport: asyncio.Transport | None,
    subscriber: Subscriber,
    send_timeout_s: float,
) -> None:
    while not ws.closed:
        for message in await subscriber.next_batch():
            try:
                await asyncio.wait_for(ws.send_str(json.dumps(message)), send_timeout_s)
            except (TimeoutError, ConnectionError):
                subscriber.cut(f"a message waited more than {send_timeout_s:g} s to be sent")
                break
        if subscriber.cut_off:
            await hang_up(ws, transport, send_timeout_s, code=1008, message=b"slow consumer")
            return
        if subscriber.ended and not subscriber.queued:  # the server's shutdown, once the last events are out
            await hang_up(ws, transport, send_timeout_s, code=1001, message=b"server shutdown")
            return


async def hang_up(
    ws: web.WebSocketResponse,
    transport: asyncio.Transport | None,
    timeout_s: float,
    *,
    code: int = 1000,
    message: bytes = b"",
) -> None:
    """Close the websocket within `timeout_s`: a client that reads nothing cannot even take the close frame, so
    then its connection is aborted (cut means closed, and shutdown waits for no one)."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), timeout_s)
    except (TimeoutError, ConnectionError):
        if transport is not None:
            transport.abort()


# -- info ----------------------------------------------------------------------------------------
async def event_schema(request: web.Request) -> web.FileResponse:
    return web.FileResponse(SCHEMA_PATH, headers={"Content-Type": "application/schema+json"})


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    stages: dict[str, Any] = {
        "vad": {"state": "ready", "model": f"silero:{services.vad_model.path.name}"},
        "asr": {"state": "ready", "model": services.asr.transcriber.name, "backlog": services.asr.backlog},
        "faces": FACE_HEALTH.health(services.settings.video.backend)
        if services.settings.video.enabled
        else {"state": "disabled"},
        "emotion": services.emotion.health() if services.emotion else {"state": "disabled"},
        "mqtt": services.mqtt.health() if services.mqtt else {"state": "disabled"},
    }
    degraded = [
        name for name, stage in stages.items() if stage["state"] not in ("ready", "connected", "disabled")
    ]
    # full / draining: a 503, so that the balancer sends new calls elsewhere (deploy/haproxy.cfg)
    admission = services.admission.state(services.participant_count)
    return web.json_response(
        {
            "status": admission or ("degraded" if degraded else "ok"),
            "node": node_id(services.settings),
            "max_participants": services.settings.server.max_participants,
            "degraded": degraded,
            "auth": services.auth.enabled,
            "stages": stages,
            "calls": services.call_count,
            "participants": services.participant_count,
            "subscribers": services.hub.subscriber_count,
        },
        status=503 if admission else 200,
    )


async def close_sessions(services: Services, timeout_s: float) -> None:
    """Close every session: the speech each holds is flushed, transcribed, estimated and published, then its leave.
    What is not done in `timeout_s` (an ASR backlog) is cut short: the utterances still waiting are published
    untranscribed, without emotion, each with an error saying why; nothing heard is dropped, and no one's leave."""
    closing = [s.close("server_shutdown") for s in list(services.sessions.values())]
    if not closing:
        return
    _, late = await asyncio.wait(closing, timeout=timeout_s)
    if not late:
        return
    log.warning("shutdown: %d participants still being analysed after %g s: cut short", len(late), timeout_s)
    services.cutoff.cut(
        f"the server shut down before this was done (server.shutdown_timeout_s: {timeout_s:g} s)"
    )
    # Without the models to wait for, what is left takes moments; a stage stuck anyway is logged, not waited for.
    _, stuck = await asyncio.wait(late, timeout=timeout_s)
    if stuck:
        log.error("shutdown: %d sessions did not close in a further %g s", len(stuck), timeout_s)


async def flush_websockets(services: Services, timeout_s: float) -> None:
    """Let each events websocket send what is queued for it (the last utterances and leaves), then close; what
    has not closed in `timeout_s` is hung up on by the caller."""
    services.hub.end()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while services.websockets and loop.time() < deadline:
        await asyncio.sleep(0.05)


def node_id(settings: Settings) -> str:
    return settings.server.node_id or socket.gethostname()


async def metrics_text(request: web.Request) -> web.Response:
    request.app[SERVICES].auth.require_admin(request)
    return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_ROOT / "index.html")


def check_face_model(video: VideoSettings) -> None:
    make_face_analyzer(video.backend, video.model_path, video.num_faces).close()


# -- app -----------------------------------------------------------------------------------------
def create_app(
    settings: Settings, *, transcriber: Transcriber | None = None, interim: Transcriber | None = None
) -> web.Application:
    """Build the app; models load at start-up. `transcriber` replaces the configured ASR, and then `interim`
    the configured interim one (None: the same transcriber), for tests."""
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)

    async def start(app: web.Application) -> None:
        # before any peer connection gathers candidates or receives video
        patches.apply(settings.webrtc.host_addresses)
        asr_settings = settings.audio.asr
        loop = asyncio.get_running_loop()
        vad_model = await loop.run_in_executor(None, SileroModel, settings.audio.vad.threads)
        chosen, interim_chosen = transcriber, interim
        if chosen is None:
            chosen = await loop.run_in_executor(None, make_transcriber, asr_settings)
            interim_chosen = await loop.run_in_executor(None, make_interim_transcriber, asr_settings)
        asr = TranscriptionService(
            chosen,
            interim=interim_chosen,
            workers=asr_settings.workers,
            queue_size=asr_settings.queue_size,
            batch=asr_settings.batch,
        )
        # a face model that cannot load stops start-up here, not in the first call
        video, face_processes = settings.video, None
        if video.enabled and video.processes:
            face_processes = await loop.run_in_executor(None, FaceProcesses, video, video.processes)
        elif video.enabled:
            await loop.run_in_executor(None, check_face_model, video)
        services = Services(
            settings,
            Authorizer(settings.auth.tokens),
            Hub(
                settings.hub.subscriber_queue,
                node=node_id(settings),
                history_events=settings.hub.history_events,
                history_s=settings.hub.history_s,
            ),
            vad_model,
            asr,
            OfferLimits(settings.webrtc),
        )
        services.face_processes = face_processes
        services.admission = Admission(settings.server.max_participants, settings.server.retry_after_s)
        if settings.server.shed_lag_ms is not None:
            services.shedder = Shedder(settings.server.shed_lag_ms / 1000)
        services.loop_lag = asyncio.create_task(watch_loop_lag(services.shedder))
        if settings.mqtt.enabled:
            services.mqtt = MqttBridge(settings.mqtt)
            services.hub.add_sink(services.mqtt.offer)
            services.mqtt.start()
        if settings.emotion.enabled:
            services.emotion = await loop.run_in_executor(
                None, EmotionService, settings.emotion, settings.audio.asr.window
            )
        app[SERVICES] = services
        # The models are millions of objects that never become garbage; frozen, the collector's full passes skip
        # them. Measured under load at 4 calls: a full pass held the GIL, and so the event loop, for 360-390 ms.
        gc.collect()
        gc.freeze()
        log.info(
            "models ready: vad=%s asr=%s; auth %s",
            vad_model.path.name,
            chosen.name,
            "on" if services.auth.enabled else "off",
        )

    async def shutdown(app: web.Application) -> None:
        services = app[SERVICES]
        await close_sessions(services, settings.server.shutdown_timeout_s)
        await flush_websockets(services, settings.hub.send_timeout_s)
        await asyncio.gather(
            *(
                hang_up(ws, transport, settings.hub.send_timeout_s, code=1001, message=b"server shutdown")
                for ws, transport in list(services.websockets.items())
            )
        )
        if services.mqtt:
            await services.mqtt.close()
        if services.loop_lag is not None:
            services.loop_lag.cancel()
        await services.asr.close()
        if services.face_processes is not None:
            await asyncio.to_thread(services.face_processes.close)
        if services.emotion:
            await services.emotion.release_loop()
            services.emotion.close()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.router.add_post("/offer", offer)
    app.router.add_post("/whip/{call}", whip_offer)
    app.router.add_delete("/whip/{call}/{session}", whip_delete)
    app.router.add_patch("/whip/{call}/{session}", whip_patch)
    app.router.add_get("/media/{call}", phone_media)
    app.router.add_get("/events", events)
    app.router.add_get("/schema/events.json", event_schema)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    if WEB_ROOT.is_dir():  # the browser call page (clients/web), no build step
        app.router.add_get("/", index)
        app.router.add_static("/web/", WEB_ROOT, show_index=False)
    return app
