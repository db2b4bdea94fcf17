"""Writing a file or folder so that no reader ever sees it half-written: under a temporary sibling name that no other
writer picks (pid and a random part: writers on several nodes may share a filesystem), then renamed into place."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any


def tmp_name(final: str) -> str:
    """A temporary sibling file name of ``final``: ``<final>.tmp<pid>-<random>``."""
    return f"{final}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"


def tmp_dir(final: str) -> str:
    """A temporary sibling of the folder ``final`` (hidden: ``.tmp-<name>-<pid>-<random>``), renamed to ``final`` once
    complete."""
    return os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_json(path: str, data: Any, indent: int | None = 2) -> None:
    """``data`` as JSON at ``path`` (values JSON does not know written with ``str``), under :func:`tmp_name` then
    renamed; on any failure (a full disk) the temporary is removed and the error raised."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_LOCKS: dict[str, Any] = {}  # lock path -> its FileLock: one object per path, so a process may re-enter it


@contextlib.contextmanager
def held_lock(path: str, waiting: str):
    """Hold the file lock at ``path`` (fcntl, via filelock: shared filesystems that support it), saying ``waiting``
    on stderr when another process holds it first; re-entrant within a process."""
    import sys

    from filelock import FileLock, Timeout

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lock = _LOCKS.setdefault(os.path.abspath(path), FileLock(os.path.abspath(path)))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        print(f"[proxy-exp] {waiting}", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: a file is hashed once per process


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex), once per process for a given (path, size, mtime)."""
    import hashlib

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]
