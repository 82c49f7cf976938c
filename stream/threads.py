"""Niceness and names of the service's worker threads: under load, speech (the event loop) comes first."""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any

_PR_SET_NAME = 15  # prctl(2): the calling thread's name, as top -H and /proc/<pid>/task/<tid>/comm show it


def lower_this_thread(nice: int, name: str | None = None) -> None:
    """Add `nice` to the calling thread's niceness and give it `name` (15 characters at most are kept).

    Linux sets niceness and names per thread, and a thread started later from this one inherits both: a model's
    compute pool made here runs at this niceness, and shows under this name, too."""
    if nice and hasattr(os, "setpriority"):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    if name and _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None).prctl  # Linux's libc; elsewhere threads keep their names
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()
