"""CPU process settings that must precede JAX's CPU backend: XLA's Eigen pool, glibc's malloc.

`disable_cpu_eigen_threads` works around a deadlock of XLA:CPU's multi-threaded Eigen pool on
vmapped graphs; `keep_freed_host_memory` stops glibc returning freed memory to the OS between
calls (page faults on every batched call; see its docstring).

On jaxlib 0.10.x we saw batched (vmapped) simulations hang in `block_until_ready` with the CPU
idle, nondeterministically (also reported upstream by other projects). Disabling the
multi-threaded Eigen pool with `--xla_cpu_multi_thread_eigen=false` avoided every hang we saw.
The flag only takes effect if it is set before JAX initializes its CPU backend, so the command
line, the tests and the studies call `disable_cpu_eigen_threads()` first; library users who
batch on CPU can export `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` themselves.
"""

import os


FLAG = "--xla_cpu_multi_thread_eigen=false"


def disable_cpu_eigen_threads() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def keep_freed_host_memory(single_arena: bool = False) -> bool:
    """Make glibc's `malloc` keep freed memory in the process instead of returning it to the OS.

    Why: XLA:CPU allocates the temporaries of every call afresh (batched simulations: megabytes
    per call). With glibc's defaults, large blocks are `mmap`ed and freed blocks at the top of
    the heap are trimmed, so every call touches new pages: measured 10,200 page faults per call
    of a batched gradient (N = 16, 256 circuits), which took 137.6 us per circuit instead of
    106.1 us with this setting (and 0-10 faults per call). Blocks of any size then come from
    the heap, and the heap is never trimmed: the resident memory stays at its peak.

    `single_arena=True` also makes one arena serve all threads: XLA computes on worker threads,
    whose arenas grow in heaps of at most 64 MiB and `mmap` anything larger (N = 32: 41,000
    faults per call and 548 us per circuit without it, none and 427 us with it). It slows XLA's
    multi-threaded compilation (measured 25-35 % longer), so only long batched runs (the
    benchmarks) ask for it; the command line does not. The tests, bound by compilation, use
    neither setting.

    Call it before JAX starts its CPU backend (threads keep the arena they started with).
    Library users on Linux can get the same with `MALLOC_MMAP_THRESHOLD_=1073741824
    MALLOC_TRIM_THRESHOLD_=2147483647` (and `MALLOC_ARENA_MAX=1`) in the environment. Returns
    whether the setting took effect (False off glibc, e.g. macOS or musl).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = (
        mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        & mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        & mallopt(_M_TOP_PAD, 64 << 20)
    )
    if single_arena:
        ok &= mallopt(_M_ARENA_MAX, 1)
    return bool(ok)
