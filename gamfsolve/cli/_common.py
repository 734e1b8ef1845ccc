"""Exit statuses, the command-line error type, and an atomic file write."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .._errors import FusionError

__all__ = [
    "EXIT_BAD_FILE", "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_WRITE", "CliError", "check_writable", "remove_stale_temps",
    "write_atomic",
]

EXIT_USAGE = 2
EXIT_BAD_FILE = 3
EXIT_MISMATCH = 4
EXIT_WRITE = 5


class CliError(Exception):
    """A user-facing failure: ``str(exc)`` is printed, ``exc.status`` is the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def _temp_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(path.stem)}\.(\d+)-[A-Za-z0-9_]+\.tmp{re.escape(path.suffix)}\Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or an unusual id: leave its file alone
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files of earlier writes of ``path`` whose process is gone (a SIGKILL, a power cut).

    Only names of :func:`write_atomic`'s own pattern ``.STEM.PID-XXXX.tmpSUFFIX`` are touched.
    """
    folder = path.parent if str(path.parent) else Path(".")
    pattern = _temp_pattern(path)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                entry.unlink()
            except OSError:
                pass


def _new_temp(path: Path, folder: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-", suffix=f".tmp{path.suffix}", dir=folder)
    os.close(fd)
    return Path(name)


def check_writable(path: Path) -> None:
    """Raise ``CliError`` (exit 5) unless a file can be created beside ``path``: checked before any work."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"cannot write {path}: folder {folder} does not exist", EXIT_WRITE)
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a folder", EXIT_WRITE)
    try:
        _new_temp(path, folder).unlink()
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", EXIT_WRITE) from exc


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (some writers insist on it). On any failure,
    interrupt or SIGTERM the temporary file is removed and ``path`` is left as it was; ones that
    a killed earlier run left behind are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"cannot write {path}: folder {folder} does not exist", EXIT_WRITE)
    remove_stale_temps(path)
    try:
        tmp = _new_temp(path, folder)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", EXIT_WRITE) from exc
    try:
        with _terminate_as_exit():
            write(tmp)
            # mkstemp creates the file private (0600); give it the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except CliError:
        raise
    except (OSError, FusionError) as exc:  # adapters report a failed save as FusionError
        raise CliError(f"cannot write {path}: {exc}", EXIT_WRITE) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises ``SystemExit(143)`` and SIGINT ``KeyboardInterrupt`` (whatever
    handler was installed before), so ``finally`` clauses clean up; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old_term = signal.signal(signal.SIGTERM, terminate)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
