"""config.yaml → typed settings; mistakes stop start-up with a message that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import ConfigError, load_settings
from tests.harness import ROOT, run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_defaults() -> None:
    settings = load_settings(ROOT / "config.yaml")
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.audio.vad.min_silence_ms == 500


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audio\.vad\.min_silnce_ms: unknown key"):
        load_settings(write(tmp_path, "audio:\n  vad:\n    min_silnce_ms: 300\n"))


def test_bad_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(write(tmp_path, "server:\n  port: 99999\n"))


def test_inconsistent_thresholds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neg_threshold"):
        load_settings(write(tmp_path, "audio:\n  vad:\n    threshold: 0.3\n    neg_threshold: 0.6\n"))


def test_bad_host_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"webrtc\.host_addresses"):
        load_settings(write(tmp_path, "webrtc:\n  host_addresses: [not-an-ip]\n"))


def test_missing_asr_model_dir_stops_startup_naming_the_path(tmp_path: Path) -> None:
    config = write(
        tmp_path, f"server:\n  port: 0\naudio:\n  asr:\n    model_path: {tmp_path}/no-such-model\n"
    )
    result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    assert f"{tmp_path}/no-such-model" in result.stderr


def test_cli_reports_config_error_and_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path, "hub:\n  subscriber_queue: -1\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "hub.subscriber_queue" in result.stderr
