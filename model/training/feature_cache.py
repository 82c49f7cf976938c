"""Per-file feature caches of the training code: a file's key (path, size, mtime) and an .npz written atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import numpy.typing as npt


def cache_key(path: Path, variant: str = "") -> str:
    """Changes when the file does (its resolved path, size or modification time), or the `variant` of the
    features computed from it ("": the first kind, whose keys predate variants)."""
    stat = path.stat()
    tail = f"|{variant}" if variant else ""
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}{tail}".encode()).hexdigest()


def save_arrays(cache: Path, stored: dict[str, npt.NDArray[np.float32]]) -> None:
    """Write the cache beside itself first, then replace it: an interrupted run never leaves half a file."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".partial.npz")
    np.savez(tmp, **stored)  # type: ignore[arg-type]
    tmp.replace(cache)
