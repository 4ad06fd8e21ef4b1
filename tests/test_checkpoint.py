"""Checkpoints you can trust: fingerprints, fallback past damaged checkpoints, no eager deletion, disk faults.

Each fault is reproduced on disk (random bytes, truncation, a deleted file, a full or read-only filesystem) and
the test asserts what survives, the one-line message, and which checkpoint is used.
"""
import glob
import os
import shutil
import subprocess
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import checkpoint as ckpt_lib


def make_state(seed):
  """Random (incompressible) float32 params like a model's, a bf16 leaf, an int step and a PRNG key."""
  r = np.random.default_rng(seed)
  return {"params": {"w": jnp.asarray(r.standard_normal((64, 256)), jnp.float32),
                     "b": jnp.asarray(r.standard_normal((7,)), jnp.bfloat16)},
          "step": jnp.asarray(seed, jnp.int32), "rng": jax.random.PRNGKey(seed)}


def same(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def new_ckpt(workdir, keep=3):
  logs = []
  return ckpt_lib.Checkpointer(str(workdir), keep=keep, log=logs.append), logs


def data_file(ck, step):
  """The largest array data file of a checkpoint (where the params' bytes are)."""
  files = [f for f in glob.glob(os.path.join(ck.step_dir(step), "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


# ---------------------------------------------------------------------------- fingerprints

def test_fingerprint_numpy_equals_jax_and_sees_one_bit():
  s = make_state(1)
  fp_dev, bad_dev = ckpt_lib.state_stats(s)
  fp_host, bad_host = ckpt_lib.state_stats(jax.device_get(s), on_host=True)
  assert fp_dev == fp_host and bad_dev == bad_host == []
  assert set(fp_dev) == {"['params']['b']", "['params']['w']", "['rng']", "['step']"}
  # an independent re-derivation for one leaf (Python ints mod 2**32)
  bits = np.asarray(s["params"]["b"]).view(np.uint16).astype(np.uint64).reshape(-1)
  want = 0
  for i, u in enumerate(bits.tolist()):
    h = ((u ^ ((i * 0x9E3779B1) % 2**32)) * 0x85EBCA6B) % 2**32
    want = (want + (h ^ (h >> 13))) % 2**32
  assert fp_dev["['params']['b']"] == want
  w = np.asarray(s["params"]["w"]).copy()
  w.view(np.uint32)[3, 5] ^= 1   # one bit of one value
  assert ckpt_lib.state_stats(dict(s, params=dict(s["params"], w=w)), on_host=True)[0]["['params']['w']"] \
      != fp_dev["['params']['w']"]
  swapped = np.asarray(s["params"]["w"]).copy()   # same values, two positions exchanged
  swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]
  assert ckpt_lib.state_stats({"w": swapped}, on_host=True)[0] != ckpt_lib.state_stats({"w": s["params"]["w"]})[0]
  w[0, 0] = np.nan
  assert ckpt_lib.state_stats({"w": w}, on_host=True)[1] == ["['w']"]


# ---------------------------------------------------------------------------- save / restore / prune

def test_roundtrip_and_prune_after_verify(tmp_path):
  ck, logs = new_ckpt(tmp_path, keep=2)
  for step in (1, 2, 3):
    ck.save(step, make_state(step), {"data": {"index": step}})
  assert ck.all_steps() == [2, 3]
  step, state, meta = ck.restore_latest(make_state(0))
  assert step == 3 and same(state, make_state(3)) and meta == {"data": {"index": 3}} and logs == []
  ck.close()
  with pytest.raises(ValueError, match="keep must be >= 1"):
    ckpt_lib.Checkpointer(str(tmp_path / "x"), keep=0)


def test_empty_workdir_restores_none(tmp_path):
  ck, _ = new_ckpt(tmp_path)
  assert ck.restore_latest(make_state(0)) is None


def test_non_finite_state_is_never_written(tmp_path):
  ck, _ = new_ckpt(tmp_path)
  ck.save(1, make_state(1), {})
  bad = make_state(2)
  bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.inf)
  with pytest.raises(ckpt_lib.NonFiniteStateError, match=r"checkpoints/2: non-finite values in \['params'\]\['w'\]"):
    ck.save(2, bad, {})
  assert ck.all_steps() == [1]


# ---------------------------------------------------------------------------- damaged checkpoints

def _two_checkpoints(tmp_path):
  ck, logs = new_ckpt(tmp_path)
  ck.save(10, make_state(10), {"data": 10})
  ck.save(20, make_state(20), {"data": 20})
  ck.close()
  return new_ckpt(tmp_path)   # a fresh process would build a new one


def _random_bytes(ck, step):
  path = data_file(ck, step)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 3)
    f.write(np.random.default_rng(0).bytes(500))


def _truncate(ck, step):
  path = data_file(ck, step)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete_meta(ck, step):
  os.remove(os.path.join(ck.step_dir(step), "meta", "metadata"))


def _delete_manifest(ck, step):
  os.remove(os.path.join(ck.step_dir(step), "state", "manifest.ocdbt"))


@pytest.mark.parametrize("damage", [_random_bytes, _truncate, _delete_meta, _delete_manifest])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage):
  ck, logs = _two_checkpoints(tmp_path)
  damage(ck, 20)
  step, state, meta = ck.restore_latest(make_state(0))
  assert step == 10 and same(state, make_state(10)) and meta == {"data": 10}
  assert len(logs) == 2 and "\n" not in logs[0]
  assert logs[0].startswith(f"checkpoint damaged: {ck.step_dir(20)}") and logs[0].endswith("falling back to step 10")
  aside = os.listdir(tmp_path / "damaged_checkpoints")
  assert len(aside) == 1 and aside[0].startswith("20-") and ck.all_steps() == [10]   # kept, not deleted
  ck.save(20, make_state(21), {"data": 21})   # the step can be written again
  assert ck.restore_latest(make_state(0))[0] == 20


def test_silent_value_corruption_is_caught_by_the_checksum(tmp_path):
  """Bytes changed so that the file still decodes: only the stored fingerprint can tell."""
  ck, logs = _two_checkpoints(tmp_path)
  like = make_state(0)
  orig = ck.mngr.restore   # simulate storage returning plausible but wrong values for step 20
  def restore(step, args):
    out = orig(step, args=args)
    if step == 20:
      out["state"]["params"]["w"] = out["state"]["params"]["w"] * 1.0001
    return out
  ck.mngr.restore = restore
  step, state, _ = ck.restore_latest(like)
  assert step == 10 and "do not match the checksum" in logs[0] and "['params']['w']" in logs[0]


def test_all_damaged_moves_nothing_and_says_so(tmp_path):
  ck, logs = _two_checkpoints(tmp_path)
  _truncate(ck, 20)
  _delete_meta(ck, 10)
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=r"no usable checkpoint in .*step 20: .*step 10: "):
    ck.restore_latest(make_state(0))
  assert ck.all_steps() == [10, 20] and not os.path.exists(tmp_path / "damaged_checkpoints")


# ---------------------------------------------------------------------------- disk faults

@pytest.fixture
def tmpfs(tmp_path):
  """A 3 MiB tmpfs mounted under tmp_path (root only); skips where mounting is not permitted."""
  mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
  mnt.mkdir()
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
  if p.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root / CAP_SYS_ADMIN")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_one_line_previous_intact(tmpfs):
  ck, _ = new_ckpt(tmpfs, keep=1)
  ck.save(1, make_state(1), {"data": 1})
  filler = tmpfs / "filler"
  with open(filler, "wb", buffering=0) as f:   # fill the disk to the last byte
    for chunk in (65536, 1):
      try:
        while True:
          f.write(b"\0" * chunk)
      except OSError:
        pass
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    ck.save(2, make_state(2), {"data": 2})
  msg = str(e.value)
  assert "\n" not in msg and ck.step_dir(2) in msg and "No space left on device" in msg, msg
  assert ck.all_steps() == [1]   # keep=1, but the only good checkpoint was not deleted
  assert same(ck.restore_latest(make_state(0))[1], make_state(1))
  os.remove(filler)   # after freeing space the next save works and then prunes
  ck.save(2, make_state(2), {"data": 2})
  assert ck.all_steps() == [2]


def test_read_only_workdir_one_line_previous_intact(tmpfs):
  ck, _ = new_ckpt(tmpfs, keep=1)
  ck.save(1, make_state(1), {"data": 1})
  subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    ck.save(2, make_state(2), {"data": 2})
  msg = str(e.value)
  assert "\n" not in msg and ck.step_dir(2) in msg and "Read-only file system" in msg, msg
  step, state, _ = new_ckpt(tmpfs)[0].restore_latest(make_state(0))
  assert step == 1 and same(state, make_state(1))


def test_unwritable_workdir_at_start(tmpfs):
  subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
  with pytest.raises(ckpt_lib.CheckpointSaveError, match=r"cannot create the checkpoint directory .*: Read-only"):
    new_ckpt(tmpfs)


# ---------------------------------------------------------------------------- reference snapshots


def test_snapshot_roundtrip_and_checksum(tmp_path, monkeypatch):
  """A reference snapshot restores bit-exactly; a changed value or a non-finite state is refused in one line."""
  params = make_state(3)["params"]
  path = ckpt_lib.snapshot_path(str(tmp_path), 3)
  ckpt_lib.save_snapshot(path, params)
  assert os.path.exists(os.path.join(path, "fingerprints.json"))
  assert same(ckpt_lib.load_snapshot(path, make_state(0)["params"]), params)
  orig = ckpt_lib.ocp.StandardCheckpointer.restore   # storage that returns plausible but wrong values
  monkeypatch.setattr(ckpt_lib.ocp.StandardCheckpointer, "restore",
                      lambda self, p, like: {**orig(self, p, like), "w": orig(self, p, like)["w"] * 1.0001})
  with pytest.raises(ckpt_lib.DamagedCheckpointError, match=r"\['w'\] do not match the checksum") as e:
    ckpt_lib.load_snapshot(path, make_state(0)["params"])
  assert "\n" not in str(e.value)
  bad = dict(params, w=params["w"].at[0, 0].set(jnp.nan))
  with pytest.raises(ckpt_lib.NonFiniteStateError, match="non-finite values in \\['w'\\]"):
    ckpt_lib.save_snapshot(ckpt_lib.snapshot_path(str(tmp_path), 4), bad)
  assert not os.path.exists(ckpt_lib.snapshot_path(str(tmp_path), 4))
