"""The trainer's jitted update compiles once: what it returns (params, optimizer state) has exactly the shardings it
was called with, so feeding it back (every training step after the first) reuses the compiled executable.

Before the fix (rl.update.make_update_fn without out_shardings) XLA picked the outputs' shardings: P() for
P(None, 'fsdp', 'tensor', None) on size-1 axes, the norms' and lm_head's specs changed, and the second call
compiled the update again (at 7B on a TPU: minutes per run). Run in a subprocess per device count (emulated CPU
devices must be set before jax is imported).
"""
import json
import math
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys
n_dev, data, fsdp = (int(x) for x in sys.argv[1:4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
import jax
import numpy as np
from experiments.configs import tiny
from rl import trainer, update

c = tiny.get_config().unlock()
c.mesh.data, c.mesh.fsdp = data, fsdp
c.total_steps = 3
t = trainer.Trainer(c.lock(), sys.argv[4])
params, opt = t.state["params"], t.state["opt_state"]
specs = lambda tree: [str(x.sharding) for x in jax.tree.leaves(tree)]
before = specs(params) + specs(opt)
M, micro, L, N = 1, 8, 8, 8
r = np.random.default_rng(0)
mb = dict(prompt=r.integers(1, 10, (M, micro, L)).astype(np.int32), prompt_mask=np.ones((M, micro, L), bool),
          tokens=r.integers(1, 10, (M, micro, N)).astype(np.int32), mask=np.ones((M, micro, N), bool),
          keep=np.ones((M, micro), bool), adv=r.normal(size=(M, micro)).astype(np.float32),
          logprobs=np.full((M, micro, N), -2.0, np.float32), old_logp=np.full((M, micro, N), -2.0, np.float32))
mb = update.put(mb, t.mesh, axis=1)
sizes, losses = [], []
for _ in range(3):
  params, opt, met = t.update(params, opt, mb, t.hp)   # donated: only the returned state is used
  sizes.append(t.update._cache_size())
  losses.append(float(met["loss"]))
after = specs(params) + specs(opt)
print("RESULT", json.dumps(dict(devices=len(jax.devices()), sizes=sizes, losses=losses,
                                changed=[(b, a) for b, a in zip(before, after) if a != b])))
"""


@pytest.mark.parametrize("n_dev,data,fsdp", [(1, 1, 1), (4, 2, 2)])
def test_update_compiles_once_across_steps(env, tmp_path, n_dev, data, fsdp):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in env.items() if not k.startswith("JAX_PERSISTENT") and k != "JAX_COMPILATION_CACHE_DIR"}
  r = subprocess.run([sys.executable, "-c", SCRIPT, str(n_dev), str(data), str(fsdp), str(tmp_path)], cwd=root,
                     env=env, capture_output=True, text=True, timeout=600)
  lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
  assert r.returncode == 0 and lines, r.stderr[-3000:]
  res = json.loads(lines[-1][len("RESULT "):])
  assert res["devices"] == n_dev
  assert res["changed"] == []                    # every params / optimizer-state leaf keeps its sharding
  assert res["sizes"][1:] == res["sizes"][:1] * 2   # steps 2 and 3 reuse step 1's executable
  assert all(math.isfinite(x) for x in res["losses"])
