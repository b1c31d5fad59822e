import os

from amcdyn._xla_flags import disable_cpu_eigen_threads


# Before JAX initializes its CPU backend (see amcdyn/_xla_flags.py).
disable_cpu_eigen_threads()

import jax  # noqa: E402
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)


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
