"""Names of the service's worker threads, as top -H shows them."""

from __future__ import annotations

import ctypes
from typing import Any

_PR_SET_NAME = 15  # prctl(2): the calling thread's name, as top -H and /proc/<pid>/task/<tid>/comm show it


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` (15 characters at most are kept), as top -H and /proc show it; threads it
    starts later (a model's compute pool) inherit it.

    No thread is niced: a niced thread preempted while it holds the GIL stalls the event loop (README "Speech
    first"); what should yield the CPU runs in a process of its own (the face models, stream/faces/face_process.py)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None).prctl  # Linux's libc; elsewhere threads keep their names
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()
