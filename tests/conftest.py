import os
import shutil
import tempfile

from helpers import TEST_XLA_FLAGS

from amcdyn._xla_flags import disable_cpu_eigen_threads


# The suite is bound by compilation, most of it LLVM's code generation: the tests compile with
# LLVM's optimizations off (measured on two of the slowest tests: 47 vs 64 s; the whole suite
# 14:58 vs 21:51). XLA's own HLO passes are unchanged (fast-math stays off); results differ from
# the default build by rounding only (an 8 x 8 INV in float64, expm and diffrax paths: settling
# times, errors and solutions within 5e-11 relative). Set XLA_FLAGS yourself to override (any
# `xla_backend_optimization_level` in it is kept). Programs the tests run in a subprocess
# inherit the flags, except the README's main job (tests/test_mc_cli.py), which runs exactly as
# a user runs it. Both flags are long-standing XLA debug options; should a future jaxlib drop
# one, XLA stops at start-up naming it (unknown flags are fatal), not silently.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()
# Before JAX initializes its CPU backend (see amcdyn/_xla_flags.py). The tests leave glibc's
# malloc as it is (`keep_freed_host_memory` is for long batched runs).
disable_cpu_eigen_threads()

import jax  # noqa: E402
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)

_CACHE_ENV = "AMCDYN_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    """One persistent JAX compilation cache per test session, shared by the xdist workers.

    Compilation dominates the suite's time, and `_fresh_jax_caches` drops the in-memory
    programs after every module; identical programs compiled again by a later module (or by the
    other worker) are then read back from disk instead of recompiled. The directory is new for
    each session (created by the controller, inherited by the workers through the environment)
    and removed at its end, so no program outlives the code that produced it.
    """
    if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
        config._amcdyn_cache_dir = tempfile.mkdtemp(prefix="amcdyn-test-jax-cache-")
        os.environ[_CACHE_ENV] = config._amcdyn_cache_dir
    path = os.environ.get(_CACHE_ENV)
    if path and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", path)
        # Every program, the small ones too: eager calls (e.g. the plain-JAX solve outside jit)
        # compile each primitive on its own, hundreds of them at ~50 ms each.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = getattr(config, "_amcdyn_cache_dir", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


@pytest.fixture
def getkey():
    """A function returning a fresh PRNG key at each call (deterministic per test)."""
    key = [jr.PRNGKey(5678)]

    def _getkey():
        key[0], sub = jr.split(key[0])
        return sub

    return _getkey


@pytest.fixture(scope="session")
def ngspice():
    """The ngspice executable. Missing ngspice fails the test when `CI` is set, else skips it."""
    from amcdyn import _spice

    if not _spice.ngspice_available():
        msg = "ngspice is not installed (apt-get install ngspice)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; it is required when CI is set")
        pytest.skip(msg)
    return "ngspice"


@pytest.fixture(scope="module", autouse=True)
def _fresh_jax_caches():
    """Drop compiled programs after each test module.

    Full-suite runs (~750 tests, several thousand compilations in one process) twice ended in a
    segmentation fault inside XLA's compiler late in the run, in tests that pass on their own;
    releasing the accumulated executables between modules bounds that state (and the memory).
    """
    yield
    jax.clear_caches()
