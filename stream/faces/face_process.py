"""Face analysis in child processes: the landmarker and each face's signals run outside the server's GIL.

In a thread of the server, face analysis held the GIL for ~30 % of the time at 4 cameras: the landmarker's
results become hundreds of Python objects per face, and the signals are numpy on small arrays. While a face
thread held it, the event loop could not read the audio packets, so speech ended late under load (README
"Speech first under a busy neighbour"). A child process competes for the CPU only, where the scheduler favours
the loop, which sleeps most of the time.

One child serves many participants: each one's analyzer lives there (MediaPipe's VIDEO mode tracks a face from
frame to frame), is made at its first frame and freed when the participant's analysis closes. A request is a
frame, the reply its faces with their signals; the tracker and the micro-expression buffer stay in the server.
A child that dies or hangs is replaced at the next frame (its participants' analyzers are made anew there); the
frames in between fail, and are counted as face-analysis failures like any other.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from model.face.landmarks import FaceAnalyzer, FaceObservation, make_face_analyzer, release_freed_memory
from model.face.signals import face_signals
from stream import metrics
from stream.config import VideoSettings

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0  # a child silent this long on one frame is taken for hung, and replaced
# A child that died is not replaced sooner than this after its start (no storm of starts from a broken model)
RESTART_AFTER_S = 5.0


class FaceProcessError(RuntimeError):
    """The face-analysis process died, hung, or could not be started."""


class FaceProcess:
    """One child process analysing the frames of every participant assigned to it, one frame at a time.

    `analyze` is called from the participants' analysis threads; they take turns on one socket (a lock), and
    wait for the reply without holding the GIL."""

    def __init__(self, settings: VideoSettings, name: str = "faces") -> None:
        self._settings = settings
        self._name = name
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._started_at = 0.0
        self.streams = 0  # participants assigned here now (for placing the next one)
        self.restarts = 0
        self._start()  # a face model that cannot load stops here, with the child's own error

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        # A fresh interpreter that imports only the face models (a fork would copy the server's threads' locks
        # mid-use; multiprocessing's spawn would import the server's main module, models and all, again). It
        # ends when the server's end of the socket closes, however the server ends.
        parent, child = socket.socketpair()
        settings = self._settings
        command = [sys.executable, "-m", "stream.faces.face_process", str(child.fileno()), settings.backend]
        command += [settings.model_path or "", str(settings.num_faces), str(settings.nice)]
        with child:
            process = subprocess.Popen(command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        self._process, self._conn, self._started_at = process, parent, time.monotonic()
        try:
            status, payload = self._receive(timeout_s=120.0)  # the first model load reads files and warms up
        except FaceProcessError:
            self._stop_child()
            raise
        if status != "ready":
            self._stop_child()
            raise payload if isinstance(payload, BaseException) else FaceProcessError(str(payload))

    def analyze(self, stream: int, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        """The faces of one frame of `stream`, signals included; raises when the child fails on it."""
        status, payload = self._request(("analyze", stream, frame_rgb, t))
        if status != "ok":
            raise FaceProcessError(str(payload))
        faces: list[FaceObservation] = payload
        return faces

    def release(self, stream: int) -> None:
        """Free the stream's analyzer in the child (if the child still has it)."""
        try:
            self._request(("close", stream, None, 0.0), restart=False)
        except FaceProcessError:
            pass  # a child that died took the analyzer with it

    def _request(self, request: tuple[str, int, Any, float], restart: bool = True) -> tuple[str, Any]:
        with self._lock:
            if self._conn is None:
                if not restart or time.monotonic() - self._started_at < RESTART_AFTER_S:
                    raise FaceProcessError(f"the face-analysis process {self._name} is down")
                self.restarts += 1
                log.warning("%s: starting a new face-analysis process", self._name)
                self._start()
            assert self._conn is not None
            # a child that stopped reading fills the socket: a frame's send does not wait forever either
            self._conn.settimeout(REPLY_TIMEOUT_S)
            try:
                send_message(self._conn, request)
            except TimeoutError:
                self._lost(f"took no frame within {REPLY_TIMEOUT_S:g} s")
            except OSError as exc:
                self._lost(f"could not be written to ({exc!r})")
            return self._receive(REPLY_TIMEOUT_S)

    def _receive(self, timeout_s: float) -> tuple[str, Any]:
        assert self._conn is not None
        self._conn.settimeout(timeout_s)
        try:
            reply: tuple[str, Any] = receive_message(self._conn)
            return reply
        except TimeoutError:
            self._lost(f"did not answer within {timeout_s:g} s")
        except (EOFError, OSError) as exc:
            code = self._process.poll() if self._process is not None else None
            self._lost(f"ended ({exc!r}, exit code {code})")

    def _lost(self, why: str) -> NoReturn:
        message = f"the face-analysis process {self._name} {why}"
        log.error("%s", message)
        metrics.FACE_PROCESSES_LOST.inc()
        self._stop_child()
        raise FaceProcessError(message)

    def _stop_child(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=2)
            self._process = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.settimeout(1.0)
                    send_message(self._conn, ("stop", 0, None, 0.0))
                except OSError:
                    pass  # it is killed below
            self._stop_child()


class FaceProcesses:
    """The server's face-analysis processes (`video.processes`); each participant is placed on the least busy."""

    def __init__(self, settings: VideoSettings, count: int) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.processes: list[FaceProcess] = []
        try:
            for i in range(count):
                self.processes.append(FaceProcess(settings, name=f"faces-{i}"))
        except BaseException:
            self.close()
            raise

    def analyzer(self) -> RemoteFaceAnalyzer:
        with self._lock:
            process = min(self.processes, key=lambda p: p.streams)
            process.streams += 1
            return RemoteFaceAnalyzer(process, next(self._ids), self._left)

    def _left(self, process: FaceProcess) -> None:
        with self._lock:
            process.streams -= 1

    def close(self) -> None:
        for process in self.processes:
            process.close()


class RemoteFaceAnalyzer:
    """A FaceAnalyzer whose model runs in a FaceProcess; the faces come back with their signals computed."""

    def __init__(self, process: FaceProcess, stream: int, on_close: Callable[[FaceProcess], None]) -> None:
        self._process = process
        self._stream = stream
        self._on_close: Callable[[FaceProcess], None] | None = on_close

    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        return self._process.analyze(self._stream, frame_rgb, t)

    def close(self) -> None:
        if self._on_close is not None:
            self._process.release(self._stream)
            self._on_close(self._process)
            self._on_close = None


# -- the child ---------------------------------------------------------------------------------------
def serve(conn: socket.socket, backend: str, model_path: str | None, num_faces: int) -> None:
    """The child's loop: answer each request on `conn` until told to stop or the server's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the server's terminal: the server stops us
    try:
        make_face_analyzer(backend, model_path, num_faces).close()  # the model loads: say so, or why not
    except Exception as exc:
        send_message(conn, ("error", _picklable(exc)))
        return
    send_message(conn, ("ready", None))
    analyzers: dict[int, FaceAnalyzer] = {}
    try:
        _answer(conn, analyzers, backend, model_path, num_faces)
    finally:
        for analyzer in analyzers.values():
            analyzer.close()


def _answer(
    conn: socket.socket,
    analyzers: dict[int, FaceAnalyzer],
    backend: str,
    model_path: str | None,
    num_faces: int,
) -> None:
    while True:
        try:
            kind, stream, frame, t = receive_message(conn)
        except (EOFError, OSError):  # the server is gone
            return
        if kind == "stop":
            return
        if kind == "close":
            analyzer = analyzers.pop(stream, None)
            if analyzer is not None:
                analyzer.close()
                release_freed_memory()
            send_message(conn, ("ok", None))
            continue
        try:
            analyzer = analyzers.get(stream)
            if analyzer is None:
                analyzer = analyzers[stream] = make_face_analyzer(backend, model_path, num_faces)
            faces = [
                dataclasses.replace(face, signals=face_signals(face.landmarks, face.blendshapes, face.pose))
                for face in analyzer.analyze(frame, t)
            ]
            reply: tuple[str, Any] = ("ok", faces)
        except Exception as exc:
            reply = ("error", repr(exc))
        send_message(conn, reply)


_HEADER = struct.Struct("!Q")  # the length of the pickled message that follows


def send_message(conn: socket.socket, message: Any) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    conn.sendall(_HEADER.pack(len(body)) + body)


def receive_message(conn: socket.socket) -> Any:
    (length,) = _HEADER.unpack(_receive_exactly(conn, _HEADER.size))
    return pickle.loads(_receive_exactly(conn, length))


def _receive_exactly(conn: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            raise EOFError("the other end closed the socket")
        got += n
    return data


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (FaceModelMissingError does), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return FaceProcessError(repr(exc))


if __name__ == "__main__":  # started by FaceProcess: fd backend model_path num_faces
    fd, backend_arg, model_arg, faces_arg, nice_arg = sys.argv[1:6]
    os.nice(int(nice_arg))  # a process of its own: niced, it yields the CPU without holding the server's GIL
    serve(socket.socket(fileno=int(fd)), backend_arg, model_arg or None, int(faces_arg))
