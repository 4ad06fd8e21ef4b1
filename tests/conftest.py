import os

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
