"""experiments/bench_step.py end to end on the tiny random model (ours only: TRL needs a real HF model)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow   # compiles the sampler and the update in a subprocess (~1 min on 2 idle cores)
def test_bench_step_tiny_ours(tmp_path):
  out = tmp_path / "res.json"
  p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "bench_step.py"), "--tiny", "--sides", "ours",
                      "--steps", "2", "--new_tokens", "8", "--micro", "0", "--out", str(out)],
                     capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONPATH": ROOT})
  assert p.returncode == 0, p.stderr[-2000:]
  assert "| ours |" in p.stdout and out.exists()
