"""`keep_freed_host_memory`: freed blocks stay in the process (no page faults on reuse)."""

import subprocess
import sys

import pytest


# Runs in a fresh interpreter (mallopt must come before the allocations it governs): allocate,
# touch and free 256 MiB twice with C malloc, and count the minor page faults of the second
# round. glibc's default serves a block this large by mmap and unmaps it on free, so the second
# round faults every page again (65,536 pages of 4 KiB); with the setting it reuses heap pages.
_PROBE = """
import ctypes, importlib.util, os, resource, sys
# The module alone, without importing amcdyn (and so JAX): seconds less per probe.
pkg = importlib.util.find_spec("amcdyn").submodule_search_locations[0]
spec = importlib.util.spec_from_file_location("flags", os.path.join(pkg, "_xla_flags.py"))
flags = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flags)
keep_freed_host_memory = flags.keep_freed_host_memory
if sys.argv[1] == "on":
    assert keep_freed_host_memory() is True
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_host_memory_reuses_pages():
    off, on = _faults("off"), _faults("on")
    # Default glibc: the second round faults every page again, 65,536 of 4 KiB (measured
    # 65,537), or at least one per 2 MiB page (128) where transparent huge pages back the map.
    assert off >= 128
    # With the setting the freed block is reused: (almost) no new faults (measured 0).
    assert on <= off // 20
