"""BLAS threads while the Numba kernels run.

OpenBLAS worker threads busy-wait for a while after each product (their ``THREAD_TIMEOUT``);
a parallel Numba kernel started in that window shares the cores with them and runs about 2x
slower. GAMF's pairwise path alternates the two all the time (an exact affinity, then a plan
product): on 8 planted MLPs 784-256-256-256-10 (2 cores) an outer iteration took 1.02 s with
the default BLAS threads and 0.49 s with one, the kernel calls themselves 6.8 ms against
2.9 ms (median). Where the BLAS products dominate (the feature-map templates) nothing is limited.

The limit needs ``threadpoolctl`` (installed with the ``numba`` extra); without it this is a
no-op. It is scoped to one solve and restored afterwards; BLAS calls made meanwhile by other
threads of the process are limited too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["one_blas_thread"]


@contextlib.contextmanager
def one_blas_thread(active: bool = True) -> Iterator[None]:
    """Limit BLAS to one thread inside the block when ``active`` and threadpoolctl is installed."""
    if not active:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: then the cores are simply shared
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
