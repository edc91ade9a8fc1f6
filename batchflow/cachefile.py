"""Pickle files under target/ that only ever speed things up (the partial-parse caches).

Reading never fails (a missing, truncated or foreign file is "no cache"); writing is atomic and
silently skipped where target/ is not writable, so a read-only project still loads and compiles.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


def read_cache(path: Path) -> Any:
    """The object pickled at `path`, or None when there is none that can be read."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except Exception:  # noqa: BLE001 - any unreadable cache is simply no cache
        return None


def write_cache(path: Path, data: Any) -> None:
    """Pickle `data` to `path` atomically (a temp file renamed over it); ignore OS errors."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
