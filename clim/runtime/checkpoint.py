"""One checkpoint format: a ``torch.save`` dict of tensors and plain Python values.

Writes go to a fsynced temporary file renamed over the target, so a kill -9 leaves the previous or
the new checkpoint, never a torn one. Loads use ``weights_only=True`` (a checkpoint cannot execute
code) and read onto the CPU whatever the device: ``load_state_dict`` copies state to the live
tensors, and :func:`set_rng_state` needs CPU tensors (the RNG setters reject CUDA ones). torch and
numpy are imported inside the functions: ``clim --help`` and ``clim ablate`` import this module for
:class:`CheckpointError` without loading torch.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

from clim.specs import CHECKPOINT_FILE

TEMP_PREFIX = "."  # save_atomic's temporary files: ".NAME.tmpPID" beside NAME
TRAINER_KEYS = ("config", "model", "data_info")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` through a fsynced temporary file and a rename; a failed write leaves
    the previous ``path`` as it was and raises :class:`CheckpointWriteError`."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as error:  # torch's zip writer reports ENOSPC as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(path, error) from None
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` (call it while holding the
    folder's :class:`RunLock`: no live writer is then using them); returns what was removed."""
    removed = [stale for stale in sorted(Path(folder).rglob(f"{TEMP_PREFIX}*.tmp[0-9]*")) if stale.is_file()]
    for stale in removed:
        stale.unlink(missing_ok=True)
    return removed


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, I/O error); the previous file is intact.
    The CLI prints it on one line and exits with code 1."""

    def __init__(self, path: Path, error: BaseException):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1][:200]
        if free is not None and free < 64 * 2**20:
            reason = f"{reason}; probably the disk is full"
        where = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
        super().__init__(f"could not write {path} ({reason}; {where}); the previous checkpoint, if any, "
                         "is kept unchanged; free some space or choose another --out, then run the same command")
        self.path = path


class RunLock:
    """One run per output folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` (holding the PID),
    dropped by the operating system however the process ends, so it is never stale. Readers never take it."""

    NAME = ".lock"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self._handle = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(f"{self.path.parent} is in use by another run (PID {holder}); wait for it to "
                                "end or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the last descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunFolderBusy(RuntimeError):
    """Another live process holds the output folder's :class:`RunLock`; the CLI exits with code 2."""


class CheckpointError(ValueError):
    """A file that cannot be a clim checkpoint (not weights-only, corrupt, truncated, not a
    checkpoint at all); the CLI prints it on one line and exits with code 2."""


def load(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded onto the CPU with ``weights_only=True``; FileNotFoundError
    or a one-line CheckpointError when it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    with open(path, "rb") as handle:  # torch.save writes a zip archive (PK) or, in the legacy format, a pickle (0x80)
        head = handle.read(512)
    if not head:
        raise CheckpointError(f"{path} is not a readable checkpoint (empty: 0 bytes)")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = "a text file" if _is_text(head) else "not a PyTorch file"
        raise CheckpointError(f"{path} is not a readable checkpoint ({kind}, not written by torch.save)")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise CheckpointError(
                f"{path} is not a weights-only checkpoint (it holds Python objects beyond tensors and plain "
                "values, or torch.save did not write it; clim loads with weights_only=True so that a file "
                "cannot run code)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt pickle)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, AttributeError, TypeError,
            UnicodeDecodeError) as error:
        # torch.load's errors for a truncated zip (RuntimeError from the zip reader), a cut pickle
        # (EOFError), ...: multi-line and addressed to PyTorch's developers.
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated: "
                              f"{type(error).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a clim checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _is_text(head: bytes) -> bool:
    """No NUL byte, and UTF-8 up to the last 3 bytes at most (the window may end inside a multi-byte character)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return b"\x00" not in head and error.start >= len(head) - 3
    return b"\x00" not in head


def load_trainer_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(file, state)`` of a trainer checkpoint given as a file or its run folder (``--ckpt``);
    CheckpointError when the file is not one (e.g. an exported backbone)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    state = load(path)
    missing = [key for key in TRAINER_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a clim trainer checkpoint (missing {', '.join(missing)})")
    return path, state


def rng_state() -> dict[str, Any]:
    """Every random generator the run uses, as tensors and plain values (weights_only-safe)."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s generators (CPU tensors, as :func:`load` returns them); the CUDA ones
    too when as many devices are visible."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
