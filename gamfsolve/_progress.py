"""Progress of a long solve: a tqdm bar on a terminal (when tqdm is installed), else log lines.

``progress=None`` (the default of :func:`gamfsolve.match`) turns it on when standard error is a
terminal; ``True`` forces it on, ``False`` off. Each update names the stage (a Sinkhorn temperature
or the Hungarian stage), the iteration and, where known, the objective.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ._errors import OptionError

__all__ = ["Progress", "resolve_progress"]

log = logging.getLogger("gamfsolve")
LOG_EVERY = 5.0  # seconds between log lines when no bar is shown


def resolve_progress(progress: bool | None) -> bool:
    """Whether to report progress: ``None`` means when standard error is a terminal."""
    if progress is None:
        stream = sys.stderr
        return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
    if not isinstance(progress, bool):
        raise OptionError(f"progress must be True, False or None, got {progress!r}")
    return progress


class Progress:
    """Reports a solver's iterations; a no-op when disabled. Use as a context manager."""

    def __init__(self, enabled: bool, method: str, total: int | None = None) -> None:
        self.enabled, self.method = enabled, method
        self.bar: Any = None
        self.last = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, desc=f"gamfsolve {method}", unit="it", leave=False, dynamic_ncols=True)

    def update(self, it: int, stage: str, objective: float | None = None) -> None:
        """One outer iteration done, in ``stage`` (e.g. ``"sinkhorn tau=0.12"`` or ``"hungarian"``)."""
        if not self.enabled:
            return
        text = stage if objective is None else f"{stage} objective={objective:.6g}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY:
            self.last = now
            log.warning("gamfsolve %s: iteration %d, %s", self.method, it, text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
