"""Atomic writes: a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "save_versioned", "load_versioned"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Readers never see a half-written file; on error the temporary file is removed and
    ``path`` is left as it was. The file gets the usual permissions (``0o666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_versioned(path: str | os.PathLike, payload: dict) -> None:
    """``torch.save`` a dict (holding its ``format_version``) atomically, synced to disk."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())


def load_versioned(path: str | os.PathLike | None, version: int, kind: str, hint: str = "") -> dict:
    """Read a file written by :func:`save_versioned`; clear errors for a missing,
    truncated/corrupt or other-version file (``kind`` names it in the messages)."""
    import torch

    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"no {kind} at {str(path)!r}.{' ' + hint if hint else ''}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable {kind} (truncated or corrupt?): {err}") from err
    found = payload.get("format_version") if isinstance(payload, dict) else None
    if found != version:
        raise ValueError(
            f"{path} has format version {found!r}; this attreg_sc reads {kind} version "
            f"{version}. Re-save it with the attreg version that wrote it."
        )
    return payload
