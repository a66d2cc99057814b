"""A run's output folder, written as one unit.

Everything a run writes goes into a staging folder next to the destination
(``.NAME.partial``); only when every file is written is the staging folder renamed to
``NAME`` (one ``rename``: readers see all of the run's files or none). Around that:

* a lock (``.NAME.lock``, ``flock``-ed, released by the kernel if the process dies), so
  two runs cannot write the same folder;
* an existing destination is replaced only with ``overwrite=True`` (the old folder is
  moved aside and removed after the new one is in place), and never when it holds one
  of the run's input files;
* the folder is checked to be writable (and to have room) before any training;
* after an error the staging folder is removed, except a training checkpoint, which
  stays for ``resume=True``; after a kill it stays as it was (``resume=True`` continues
  from its checkpoint, ``overwrite=True`` starts over).

Examples
--------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with OutputFolder(root / "run") as staging:
...     _ = (staging / "result.txt").write_text("done")
>>> sorted(p.name for p in root.iterdir())
['run']
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

__all__ = ["OutputFolder", "OutputFolderError", "CHECKPOINT_NAME"]

logger = logging.getLogger(__name__)

#: Name of the training checkpoint inside the staging folder (kept for a resume).
CHECKPOINT_NAME = "checkpoint.pt"


class OutputFolderError(Exception):
    """The output folder cannot be used (exists, locked, not writable, holds an input)."""


class OutputFolder:
    """Context manager yielding the staging folder; on success it becomes ``path``.

    Parameters
    ----------
    path
        Destination folder.
    overwrite
        Replace an existing destination (after the new one is complete).
    resume
        Continue a killed or failed run: its staging folder must hold a checkpoint.
    inputs
        Files the run reads: the destination may not be, or contain, any of them.
    needed_bytes
        Refuse to start when the file system has less free space than this.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        resume: bool = False,
        inputs: Iterable[str | os.PathLike] = (),
        needed_bytes: int = 0,
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self.overwrite = overwrite
        self.resume = resume
        self.inputs = [Path(p) for p in inputs]
        self.needed_bytes = int(needed_bytes)
        self.staging = self.path.parent / f".{self.path.name}.partial"
        self.lock_path = self.path.parent / f".{self.path.name}.lock"
        self._lock_fd: int | None = None

    @property
    def checkpoint(self) -> Path:
        """Where the run's training checkpoint lives while it runs."""
        return self.staging / CHECKPOINT_NAME

    # -- checks --------------------------------------------------------------------
    def _check_destination(self) -> None:
        out = self.path.resolve()
        if self.path.exists() and not self.path.is_dir():
            raise OutputFolderError(f"{self.path} is a file; --out takes a folder.")
        for p in self.inputs:
            src = p.resolve()
            if src == out or out in src.parents:
                raise OutputFolderError(
                    f"the output folder {self.path} holds the input {p}: writing the run "
                    "there would replace it. Choose another --out."
                )
        if self.path.exists() and not self.overwrite and not self.resume:
            raise OutputFolderError(
                f"{self.path} exists; pass --overwrite to replace it (after the new run is "
                "complete) or choose another --out."
            )

    def _check_space(self) -> None:
        if self.needed_bytes <= 0:
            return
        free = shutil.disk_usage(self.path.parent).free
        if free < self.needed_bytes:
            raise OutputFolderError(
                f"{self.path.parent} has {free / 2**20:.1f} MiB free; the outputs need about "
                f"{self.needed_bytes / 2**20:.1f} MiB. Free space or choose another --out."
            )

    # -- lock ----------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            logger.warning("no file locking on this platform: do not share --out between runs")
            return
        while True:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputFolderError(
                    f"another run is writing {self.path} (it holds {self.lock_path}); wait "
                    "for it to finish or choose another --out."
                ) from None
            try:  # the file we locked must still be the lock file (not one just removed)
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:  # pragma: no cover
            pass
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    # -- protocol ------------------------------------------------------------------
    def __enter__(self) -> Path:
        self._check_destination()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        except OSError as err:  # read-only, a file in the way, no such device...
            raise OutputFolderError(
                f"cannot write to {self.path.parent} ({err.strerror or err}); choose a "
                "writable --out."
            ) from err
        try:
            self._check_space()
            self._prepare_staging()
        except BaseException:
            self._release_lock()
            raise
        return self.staging

    def _prepare_staging(self) -> None:
        if self.resume:
            if not self.checkpoint.exists():
                raise OutputFolderError(
                    f"nothing to resume: {self.checkpoint} does not exist (a run keeps it only "
                    "until it finishes). Start the run without --resume."
                )
            return
        if self.staging.exists():
            if not self.overwrite:
                raise OutputFolderError(
                    f"an unfinished run left {self.staging}: pass --resume to continue it "
                    "(same settings) or --overwrite to start over."
                )
            shutil.rmtree(self.staging)
        try:
            self.staging.mkdir()
            probe = self.staging / ".writable"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise OutputFolderError(
                f"cannot write to {self.path.parent} ({err.strerror}); choose a writable --out."
            ) from err

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                self._clean_after_failure()
        finally:
            self._release_lock()

    def _commit(self) -> None:
        if self.checkpoint.exists():
            self.checkpoint.unlink()
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.replaced"
            if old.exists():
                shutil.rmtree(old)
            os.rename(self.path, old)
        os.rename(self.staging, self.path)
        _fsync_dir(self.path.parent)
        if old is not None:
            shutil.rmtree(old)

    def _clean_after_failure(self) -> None:
        if not self.staging.exists():
            return
        keep = self.checkpoint.exists()
        for entry in self.staging.iterdir():
            if keep and entry.name == CHECKPOINT_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if keep:
            logger.warning(
                "the run failed; its last checkpoint stays in %s: continue with --resume",
                self.staging,
            )
        else:
            shutil.rmtree(self.staging, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
