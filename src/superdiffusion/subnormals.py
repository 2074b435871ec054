"""Subnormal floats flushed to zero on every CPU thread that computes.

Arithmetic on subnormal floats (0 < |x| < 1.2e-38) is many times slower on x86 CPUs (a square
root of one takes about 75 times as long here), and they arise in a diffusion teacher's decayed
deep blocks and in their gradients. ``torch.set_flush_denormal(True)`` sets the flush-to-zero
and denormals-are-zero modes of the *calling* thread only; a worker of torch's OpenMP pool
created before it (by any parallel operation, such as loading the data) keeps computing on
subnormals, so with two threads half of every parallel operation stayed slow.
:func:`flush_subnormals` therefore sets the modes inside one parallel region of the pool, on
each of its threads; threads the pool creates later inherit them. Values below 1.2e-38 change
no prediction.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

LOG = logging.getLogger("superdiffusion")

_PROBE_BITS = 0x00400000  # the float32 5.9e-39, a subnormal


def _openmp_runtime() -> ctypes.CDLL | None:
    """torch's own OpenMP runtime (already loaded: the same library, the same pool), or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    lib = Path(torch.__file__).parent / "lib"
    for candidate in [*sorted(lib.glob("libgomp*.so*")), *sorted(lib.glob("libiomp5*")), "libgomp.so.1"]:
        try:
            runtime = ctypes.CDLL(str(candidate))
            runtime.GOMP_parallel  # noqa: B018 - present in GNU's and Intel's runtimes
            return runtime
        except (OSError, AttributeError):
            continue
    return None


_EACH_THREAD = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _flush_this_thread(_: int | None) -> None:
    torch.set_flush_denormal(True)


_callback = _EACH_THREAD(_flush_this_thread)  # kept alive: the runtime calls it from its threads


def flush_subnormals() -> bool:
    """Flush subnormals to zero on this thread and on every thread of torch's OpenMP pool.
    Returns whether every thread now flushes (False where the CPU cannot, or the pool's
    threads could not be reached: logged)."""
    if not torch.set_flush_denormal(True):  # this CPU has no such mode (not x86 with SSE3)
        return False
    runtime = _openmp_runtime()
    if runtime is not None:
        threads = ctypes.c_uint(torch.get_num_threads())
        runtime.GOMP_parallel(_callback, None, threads, ctypes.c_uint(0))
    flushed = every_thread_flushes()
    if not flushed:
        LOG.warning(
            "subnormal floats are not flushed on every CPU thread (torch's OpenMP pool was not reached); "
            "training may slow down as weights decay: set train.threads=1 if it does"
        )
    return flushed


def every_thread_flushes() -> bool:
    """Whether every thread of a parallel operation reads subnormals as zero: a subnormal times
    1e30 is 0 there, 5.9e-9 on a thread that does not flush. No timing involved."""
    n = max(1, torch.get_num_threads()) * 65_536 * 2  # above the pool's grain: every thread takes a share
    probe = torch.full((n,), _PROBE_BITS, dtype=torch.int32).view(torch.float32)
    return int((probe * 1e30).count_nonzero()) == 0
