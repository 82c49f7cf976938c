"""Test harness shared by tests and benchmarks: a real server process, a recording websocket subscriber."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # The server must stop by itself if the test run is killed.
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`microemo ARGS` in a child process from the repository root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ServerProcess:
    """`microemo serve` in a child process on a free loopback port; it dies with its parent."""

    def __init__(self, config: dict[str, Any], workdir: Path, ready_timeout_s: float = 60) -> None:
        self.port = free_port()
        config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": self.port}}
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "serve", "--config", str(self.config_path)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.tls = bool(config["server"].get("tls_cert"))
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/healthz", timeout=1, context=self.ssl_context()
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.log_path.read_text()}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Tests trust the self-signed certificate they made."""
        if not self.tls:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def children(self) -> list[int]:
        """The server's child processes now (its face-analysis processes)."""
        return children_of(self.process.pid)

    def read_proc(self, field: str, children: bool = False) -> int:
        """A kB figure from /proc/<pid>/status, e.g. VmRSS or VmHWM (peak RSS); with `children`, summed over the
        server and its child processes (the face models run there)."""
        return sum(
            _status_kb(pid, field) for pid in [self.process.pid, *(self.children() if children else [])]
        )

    def cpu_seconds(self) -> float:
        """CPU time of the server and of its live child processes."""
        total = 0.0
        for pid in [self.process.pid, *self.children()]:
            try:
                total += proc_cpu_seconds(f"/proc/{pid}/stat")[0]
            except FileNotFoundError:
                continue  # a child that ended meanwhile
        return total

    def thread_count(self) -> int:
        """Threads of the server and of its child processes now."""
        return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in [self.process.pid, *self.children()])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


class Mosquitto:
    """A real mosquitto broker on a free loopback port; restartable on the same port. With `persistence`, the
    sessions of subscribers that asked for one (and their subscriptions and queued messages) outlive a restart."""

    def __init__(self, workdir: Path, persistence: bool = False) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        stored = "persistence false\n"
        if persistence:  # started as root, mosquitto would save as its own user, who may not enter workdir
            stored = f"persistence true\npersistence_location {workdir}/\n"
            stored += "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{stored}log_dest stderr\n"
        )
        self.log_path = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.config)], stdout=log, stderr=log, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class EventLog:
    """A websocket subscriber that records every message it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # monotonic time each message arrived
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        self._ws = await connect(self.url)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        async for text in self._ws:
            self.messages.append(json.loads(text))
            self.arrivals.append(time.monotonic())
            self._arrived.set()

    def of_type(
        self, type_: str, participant: str | None = None, *, interim: bool = False
    ) -> list[dict[str, Any]]:
        """Messages of a type (and participant); interim updates of open utterances only with `interim`."""
        closed = closing_seqs(self.messages)
        return [
            m
            for m in self.messages
            if m["type"] == type_
            and (participant is None or m.get("participant") == participant)
            and (interim or not is_interim(m, closed))
        ]

    def interim(self, type_: str, participant: str | None = None) -> list[dict[str, Any]]:
        """The interim updates (final: false, before their utterance closed) of a type."""
        closed = closing_seqs(self.messages)
        return [m for m in self.of_type(type_, participant, interim=True) if is_interim(m, closed)]

    async def wait_for(
        self, type_: str, participant: str | None = None, count: int = 1, timeout: float = 30
    ) -> None:
        await wait_until(
            lambda: len(self.of_type(type_, participant)) >= count,
            self._arrived,
            timeout,
            lambda: f"{count} {type_} events not received; got {[m['type'] for m in self.messages]}",
        )

    async def send(self, text: str) -> None:
        await self._ws.send(text)


def closing_seqs(messages: list[dict[str, Any]]) -> dict[str, int]:
    """The seq of each utterance's closing `utterance` event, by utterance id."""
    return {m["utterance"]: m["seq"] for m in messages if m["type"] == "utterance" and m.get("final", True)}


def is_interim(message: dict[str, Any], closing: dict[str, int]) -> bool:
    """An update about an utterance still open: utterance and face events say so (final: false); an emotion
    with final: false is interim when it came before its utterance closed (after, it is the fast estimate
    that an LLM refinement follows)."""
    if message.get("final", True) or message["type"] not in ("utterance", "face", "emotion"):
        return False
    if message["type"] != "emotion":
        return True
    closed_at = closing.get(message["utterance"])
    return closed_at is None or message["seq"] < closed_at


def messages_per_utterance(
    events: EventLog, validator: jsonschema.Draft202012Validator, expected: int
) -> list[list[dict[str, Any]]]:
    """Checks every event against the schema and that `expected` utterances came; then, for each utterance in
    order, every message its speaker's pipeline sent about it once closed (the utterance event first): no
    interim update, no listener's reaction."""
    assert_call_events_valid(events.messages, validator)
    utterances = events.of_type("utterance")
    assert len(utterances) == expected, [u["text"] for u in utterances]
    closed = closing_seqs(events.messages)
    return [
        [
            m
            for m in events.messages
            if m.get("utterance") == u["utterance"] and m["type"] != "reaction" and not is_interim(m, closed)
        ]
        for u in utterances
    ]


async def wait_until(
    condition: Callable[[], bool], arrived: asyncio.Event, timeout: float, missing: Callable[[], str]
) -> None:
    """Wait until `condition` holds, checking it each time `arrived` is set; TimeoutError(missing()) after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(missing())
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), remaining)
        except TimeoutError:
            pass


def events_url(server: ServerProcess, call: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{server.port}/events?call={call}{extra}"


def assert_call_events_valid(
    messages: list[dict[str, Any]], validator: jsonschema.Draft202012Validator
) -> None:
    for message in messages:
        validator.validate(message)
    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq has gaps or reorders: {seqs}"


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` now."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            pids += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return 0  # a child that ended meanwhile
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(stat_path: str) -> tuple[float, int]:
    """(user + system CPU seconds, niceness) of a process or thread, from its /proc stat file."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[16])
