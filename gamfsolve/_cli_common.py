"""Exit statuses, the command-line error type, and an atomic file write."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["EXIT_BAD_FILE", "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_WRITE", "CliError", "write_atomic"]

EXIT_USAGE = 2
EXIT_BAD_FILE = 3
EXIT_MISMATCH = 4
EXIT_WRITE = 5


class CliError(Exception):
    """A user-facing failure: ``str(exc)`` is printed, ``exc.status`` is the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (some writers insist on it). On any failure the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"cannot write {path}: folder {folder} does not exist", EXIT_WRITE)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except CliError:
        raise
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc}", EXIT_WRITE) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
