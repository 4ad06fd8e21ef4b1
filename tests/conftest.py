import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests run on the CPU, in float32, with deterministic settings.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=40, deadline=None)
    settings.load_profile("ci")
except ImportError:  # hypothesis is in the test extra
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for tests that run experiments/run.py (or other scripts) in subprocesses: CPU, this checkout's
    code first on the path, no forced device count, and a persistent compilation cache shared by the module's
    processes (later processes load the executables compiled by the first one)."""
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    e.pop("XLA_FLAGS", None)
    return e
