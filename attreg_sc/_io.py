"""Atomic writes (a temporary file in the same folder, then ``os.replace``) and the safe,
checksummed file format of saved models and checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "write_h5ad_safely",
    "save_versioned",
    "load_versioned",
    "to_safe",
    "from_safe",
    "read_safe_payload",
    "read_regular_file",
    "UnsafeFileError",
    "MAX_FILE_BYTES",
]


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


def write_h5ad_safely(adata, path: str | os.PathLike) -> None:
    """Write ``adata`` as ``.h5ad``: the HDF5 file is built in memory, then written with
    one plain, synced, atomic file write.

    HDF5 writing straight to disk crashes the interpreter (SIGSEGV) when the disk fills
    or a file-size limit is hit; here such a failure is an ``OSError`` naming the cause,
    and ``path`` is left as it was. Costs one copy of the file's bytes in memory. Like
    ``AnnData.write_h5ad``, string columns of ``obs``/``var`` become categoricals (in
    place).
    """
    import h5py
    from anndata.io import write_elem

    adata.strings_to_categoricals()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_elem(f, "/", adata)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())


# A saved file is ``MAGIC + sha256 hex digest + "\n" + torch.save bytes``. The payload holds
# tensors, numbers, strings, lists, tuples and dicts only (numpy arrays are stored as
# tensors or string lists and restored on load), so it loads with
# ``torch.load(weights_only=True)``: no file can run code when it is read. The digest
# covers every byte of the payload: a flipped byte is refused with the file's name.
MAGIC = b"attreg-file 1 sha256:"
_NDARRAY, _STRARRAY = "__attreg_ndarray__", "__attreg_str_array__"
_OBJARRAY, _FRAME = "__attreg_object_array__", "__attreg_data_frame__"
_PLAIN = (bool, int, float, str, type(None))


def to_safe(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars replaced by tensors / Python values (what a
    ``weights_only`` load accepts); :func:`from_safe` undoes it."""
    import pandas as pd
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj)).clone()}
        values = obj.ravel().tolist()
        if all(isinstance(v, str) for v in values):
            return {_STRARRAY: values, "shape": list(obj.shape)}
        if all(isinstance(v, _PLAIN) for v in values):  # e.g. integer categories
            return {_OBJARRAY: values, "shape": list(obj.shape)}
        raise TypeError(
            f"an array of {obj.dtype} holding {type(values[0]).__name__} "
            "cannot be stored safely; store plain values."
        )
    if isinstance(obj, pd.DataFrame):
        return {
            _FRAME: {str(c): to_safe(obj[c].to_numpy()) for c in obj.columns},
            "index": to_safe(np.asarray(obj.index)),
            "index_name": obj.index.name,
        }
    if isinstance(obj, pd.Index):
        return to_safe(np.asarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_safe(v) for v in obj)
    return obj


def from_safe(obj: Any, _depth: int = 0) -> Any:
    """Inverse of :func:`to_safe`. A structure :func:`to_safe` cannot have written (a
    marker holding the wrong type, a shape that does not fit its values, nesting deeper
    than 64 levels) raises :class:`UnsafeFileError`."""
    if _depth > 64:
        raise UnsafeFileError("the file nests containers more than 64 levels deep.")
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            import torch

            tensor = obj[_NDARRAY]
            if not isinstance(tensor, torch.Tensor) or len(obj) != 1:
                raise UnsafeFileError("an array entry of the file does not hold a tensor.")
            return tensor.numpy()
        if _STRARRAY in obj or _OBJARRAY in obj:
            values = obj.get(_STRARRAY, obj.get(_OBJARRAY))
            shape = obj.get("shape")
            if (
                not isinstance(values, list)
                or not all(isinstance(v, _PLAIN) for v in values)
                or not isinstance(shape, list)
                or not all(isinstance(n, int) and n >= 0 for n in shape)
                or int(np.prod(shape, dtype=np.float64)) != len(values)
            ):
                raise UnsafeFileError("an array entry of the file has values that do not fit "
                                      "its shape.")
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out.reshape(shape)
        if _FRAME in obj:
            import pandas as pd

            columns = obj[_FRAME]
            if not isinstance(columns, dict) or "index" not in obj:
                raise UnsafeFileError("a table entry of the file is malformed.")
            index = from_safe(obj["index"], _depth + 1)
            name = obj.get("index_name")
            try:
                frame = pd.DataFrame(
                    {str(k): from_safe(v, _depth + 1) for k, v in columns.items()},
                    index=pd.Index(index, name=name if isinstance(name, (str, type(None)))
                                   else None),
                )
            except (TypeError, ValueError) as err:
                raise UnsafeFileError(f"a table entry of the file is malformed: {err}") from None
            return frame
        return {k: from_safe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_safe(v, _depth + 1) for v in obj)
    return obj


def save_versioned(path: str | os.PathLike, payload: dict) -> None:
    """Write a dict (holding its ``format_version``) atomically, synced to disk, in the
    safe checksummed format (see :data:`MAGIC`)."""
    import torch

    buffer = io.BytesIO()
    torch.save(to_safe(payload), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest().encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(MAGIC + digest + b"\n")
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


#: largest file the safe reader reads (a model of 100k genes is well below; a crafted
#: size field cannot make a read exceed it)
MAX_FILE_BYTES = 8 * 2**30


class UnsafeFileError(ValueError):
    """A file that is not read: not a regular file, outside its folder, too large, not
    written by attreg_sc, truncated or corrupt, or holding objects a safe load refuses."""


def read_regular_file(
    path: str | os.PathLike,
    kind: str,
    inside: str | os.PathLike | None = None,
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a device, FIFO or socket), lies
    inside the folder ``inside`` once symlinks are resolved, and has at most ``max_bytes``
    bytes (default :data:`MAX_FILE_BYTES`); otherwise :class:`UnsafeFileError` naming the
    file. The file is opened without blocking (a FIFO cannot hang the read) and its size
    is checked on the open descriptor before anything is read.

    Parameters
    ----------
    path
        The file.
    kind
        How the file is named in errors.
    inside
        A folder the file must be in (``None``: anywhere).
    max_bytes
        Size cap.

    Examples
    --------
    >>> read_regular_file("/dev/zero", "model file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    attreg_sc._io.UnsafeFileError: /dev/zero is not a regular file (a device...
    """
    import stat

    cap = MAX_FILE_BYTES if max_bytes is None else int(max_bytes)
    path = Path(path)
    if inside is not None:
        root = Path(inside).resolve()
        real = path.resolve()
        if real != root and root not in real.parents:
            raise UnsafeFileError(
                f"{path} points outside {inside} (to {real}); a {kind} is read only from "
                "inside its folder. Copy the file into the folder instead of linking it."
            )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UnsafeFileError(f"{path} cannot be opened as a {kind}: {err.strerror}.") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(
                f"{path} is not a regular file (a device, FIFO, socket or folder); a {kind} "
                "must be a regular file."
            )
        if info.st_size > cap:
            raise UnsafeFileError(
                f"{path} has {info.st_size:,} bytes, more than the {cap:,} a {kind} may have; "
                "it is not a file this library wrote."
            )
        chunks, left = [], info.st_size + 1  # one byte more: a file that grew is noticed
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise UnsafeFileError(f"{path} grew beyond {cap:,} bytes while it was read.")
    return data


def read_safe_payload(
    path: str | os.PathLike | None,
    kind: str,
    hint: str = "",
    inside: str | os.PathLike | None = None,
    max_bytes: int | None = None,
) -> Any:
    """The payload of a file written by :func:`save_versioned`, as stored (no version
    check, arrays still in their safe form); clear errors for a missing, foreign,
    truncated/corrupt (checksum) or unsafe file (``kind`` names it). Only a regular file
    (inside ``inside``, at most ``max_bytes``) is read: see :func:`read_regular_file`.

    Reading never executes code from the file (``torch.load(weights_only=True)``)."""
    import torch

    if path is None or not os.path.lexists(path):
        raise FileNotFoundError(f"no {kind} at {str(path)!r}.{' ' + hint if hint else ''}")
    raw = read_regular_file(path, kind, inside=inside, max_bytes=max_bytes)
    if not raw.startswith(MAGIC):
        raise UnsafeFileError(
            f"{path} is not a {kind} written by this attreg_sc (no attreg header): files of "
            "earlier versions and other pickles are not loaded, because unpickling them could "
            "run code. Re-train the model with this version."
        )
    header_end = raw.find(b"\n", len(MAGIC))
    digest, data = raw[len(MAGIC) : header_end], raw[header_end + 1 :]
    if header_end < 0 or hashlib.sha256(data).hexdigest().encode() != digest:
        raise UnsafeFileError(
            f"{path} is truncated or corrupt: its checksum does not match its contents "
            f"(the {kind} was damaged after it was written). Use another copy or re-train."
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(
            f"{path} holds objects a safe load refuses (it could run code when unpickled); "
            f"it was not written by attreg_sc: {err}"
        ) from err
    except Exception as err:
        raise UnsafeFileError(
            f"{path} is not a readable {kind} (truncated or corrupt?): {err}"
        ) from err
    return payload


def load_versioned(path: str | os.PathLike | None, version: int, kind: str, hint: str = "") -> dict:
    """Read a file written by :func:`save_versioned` (:func:`read_safe_payload`) and check
    its ``format_version`` (``kind`` names the file in errors)."""
    payload = read_safe_payload(path, kind, hint)
    found = payload.get("format_version") if isinstance(payload, dict) else None
    if found != version:
        raise UnsafeFileError(
            f"{path} has format version {found!r}; this attreg_sc reads {kind} version "
            f"{version}. Re-save it with the attreg version that wrote it."
        )
    return from_safe(payload)
