"""Operations: health, Prometheus metrics, TLS, JSON logs."""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import stream_speech

pytestmark = pytest.mark.slow


async def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, ssl=context if context is not None else True) as response:
            return response.status, response.content_type, await response.text()


async def test_health_reports_stage_states(server: ServerProcess) -> None:
    status, content_type, text = await get(f"{server.url}/healthz")
    health = json.loads(text)
    assert status == 200 and content_type == "application/json"
    assert health["status"] == "ok"
    assert health["stages"]["vad"]["state"] == "ready"
    assert health["stages"]["asr"] == {"state": "ready", "model": "faster-whisper:tiny.en", "backlog": 0}
    assert health["stages"]["mqtt"]["state"] == "disabled"


async def test_metrics_count_what_happened(server: ServerProcess, speech: Speech) -> None:
    async with EventLog(events_url(server, "call-metrics")) as events:
        await stream_speech(server.url, "call-metrics", "hal", speech.samples[: SPEECH_RATE * 5], SPEECH_RATE)
        await events.wait_for("participant.leave", timeout=30)
    status, content_type, text = await get(f"{server.url}/metrics")
    assert status == 200 and content_type == "text/plain"
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    assert samples['microemo_events_total{type="utterance"}'] >= 1
    assert samples["microemo_asr_audio_seconds_total"] > 0
    assert samples['microemo_stage_latency_seconds_count{stage="utterance"}'] >= 1
    assert samples["microemo_participants"] == 0  # everyone left


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_when_cert_and_key_are_configured(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = {
        **TEST_CONFIG,
        "server": {"tls_cert": str(cert), "tls_key": str(key)},
        "logging": {"format": "json"},
    }
    server = ServerProcess(config, tmp_path)
    try:
        assert server.url.startswith("https://")
        status, _, text = await get(f"{server.url}/healthz", server.ssl_context())
        assert status == 200 and json.loads(text)["status"] == "ok"
        with pytest.raises(aiohttp.ClientError):  # plain http on the TLS port does not work
            await get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()
    # structured logs: one JSON object per line, with the logger name and level
    records = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(r["name"] == "stream.serve.server" and "models ready" in r["message"] for r in records)
    assert all({"levelname", "asctime", "message"} <= r.keys() for r in records)
