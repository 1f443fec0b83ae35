"""Shared test settings and helpers."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Fresh random inputs every run (no derandomize); no per-example deadline on a shared 2-core box.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng():
    """A NumPy generator with a fresh seed, printed on failure by pytest's -ra output."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


def pytest_runtest_setup(item):
    """A test parametrized with a backend this install lacks (numba is an extra) skips, naming why."""
    backend = getattr(getattr(item, "callspec", None), "params", {}).get("backend")
    if isinstance(backend, str) and backend in ("cython", "numba"):
        from lstminfer.backends import why_unavailable

        why = why_unavailable(backend)
        if why is not None:
            pytest.skip(f"backend '{backend}': {why}")
