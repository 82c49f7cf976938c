"""Shared fixtures: synthesised speech, a real server process on a free loopback port, the event schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from tests.harness import ROOT, ServerProcess
from tests.media import Speech, compose

SENTENCES = [
    "That is wonderful news, I love it.",
    "Please send me the report before the meeting tomorrow.",
]


@pytest.fixture(scope="session")
def speech() -> Speech:
    return compose(SENTENCES, lead_s=0.6, pause_s=1.2, tail_s=1.2)


@pytest.fixture(scope="session")
def event_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "stream" / "schema" / "events.json").read_text())
    return jsonschema.Draft202012Validator(schema)


TEST_CONFIG: dict[str, Any] = {"webrtc": {"host_addresses": ["127.0.0.1"], "ice_servers": []}}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(TEST_CONFIG, tmp_path_factory.mktemp("server"))
    yield process
    process.stop()
