"""Work around a deadlock of XLA:CPU's multi-threaded Eigen pool on vmapped graphs.

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
