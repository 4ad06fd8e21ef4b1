"""Orbax checkpoints of the trainer state that are verified before they are trusted; policy snapshots.

    ckpt = Checkpointer(workdir, keep=3)
    ckpt.save(step, state, meta)          # refuses a non-finite state; writes, reads back, checks, then prunes
    found = ckpt.restore_latest(like)     # -> (step, state, meta) of the newest checkpoint that verifies, or None

The trainer state is one pytree of arrays (params, opt_state, ref_params, step, rng) plus a small JSON dict
(data iterator position, reference source, eval history). Each save stores, in that JSON dict, a fingerprint
of every leaf's values (a uint32 hash of its bits, the same however the array is sharded). A checkpoint is
trusted only if it restores, every float leaf is finite and every fingerprint matches; the newest one that does
is used, and the damaged newer ones are moved to `workdir/damaged_checkpoints/` (never deleted) with one line
on stderr each. Old checkpoints are deleted only after a newer one has been written and read back verified, so
the last good checkpoint is never removed first (Orbax's own `max_to_keep` would delete eagerly: it is off).
A save that fails (disk full, read-only directory, ...) raises `CheckpointSaveError` whose message is one line
naming the path and the cause; the previous checkpoints are untouched.
"""
import errno
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_INTEGRITY_KEY = "_checkpoint"   # in the JSON meta: {"format": 1, "fingerprints": {leaf path: uint32}}


class CheckpointError(Exception):
  """A checkpoint could not be written or trusted; `str(e)` is one line."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, read-only or missing directory, ...); earlier ones are intact."""


class NonFiniteStateError(CheckpointError):
  """The state to save has NaN/inf values; nothing was written."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint on disk does not restore, has non-finite values or does not match its fingerprints."""


# ============================================================================ fingerprints

_GOLDEN, _MIX = 0x9E3779B1, 0x85EBCA6B


def _bits_u32(x, xp):
  """Array of any dtype -> its raw bits as uint32, flattened. xp: jnp or np (same results)."""
  x = xp.asarray(x).reshape(-1)
  if x.dtype == xp.bool_:
    return x.astype(xp.uint32)
  size = x.dtype.itemsize
  if size not in (1, 2, 4):
    raise TypeError(f"fingerprint: unsupported dtype {x.dtype}")
  as_uint = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32}[size]
  u = jax.lax.bitcast_convert_type(x, as_uint) if xp is jnp else x.view(as_uint)
  return u.astype(xp.uint32)


def _fingerprint(x, xp):
  """uint32 hash of an array's bits and positions; sums wrap mod 2**32, so any shard order gives the same."""
  u = _bits_u32(x, xp)
  idx = xp.arange(u.shape[0], dtype=xp.uint32)
  h = (u ^ (idx * xp.uint32(_GOLDEN))) * xp.uint32(_MIX)
  h = h ^ (h >> xp.uint32(13))
  return xp.sum(h, dtype=xp.uint32)


def _finite(x, xp):
  x = xp.asarray(x)   # jnp.issubdtype also knows bfloat16 (np.issubdtype does not)
  return xp.all(xp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else xp.bool_(True)


@jax.jit
def _device_stats(tree):
  """pytree of (sharded) arrays -> (fingerprints, finite flags), one uint32 / bool per leaf."""
  return (jax.tree.map(lambda x: _fingerprint(x, jnp), tree), jax.tree.map(lambda x: _finite(x, jnp), tree))


def _key_data(tree):
  """New-style typed PRNG keys -> their uint32 data (bits can't be viewed otherwise)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                      else x, tree)


def state_stats(tree, on_host=False):
  """-> ({leaf path: fingerprint int}, [paths of leaves with NaN/inf]). on_host: NumPy arrays, no device."""
  tree = _key_data(tree)
  if on_host:
    fps = jax.tree.map(lambda x: _fingerprint(x, np), tree)
    fin = jax.tree.map(lambda x: _finite(x, np), tree)
  else:
    fps, fin = jax.device_get(_device_stats(tree))
  fps = {jax.tree_util.keystr(p): int(v) for p, v in jax.tree_util.tree_leaves_with_path(fps)}
  bad = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(fin) if not bool(v)]
  return fps, bad


# ============================================================================ errors as one line

def _names(paths):
  """The first three leaf paths, ' ...' when there are more (for one-line errors)."""
  return ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")


def _one_line(e, limit=240):
  s = str(e).split("See full TensorStore details")[0].strip().replace("\n", " ")
  s = f"{type(e).__name__}: {s}" if s else type(e).__name__
  return s if len(s) <= limit else s[:limit] + " ..."


def _os_cause(e):
  """The first OSError with an errno in e's cause/context chain (Orbax wraps them), else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return e
    e = e.__cause__ or e.__context__
  return None


def _save_cause(e, path):
  """A short cause for a failed save: the OS error if there is one, else what the directory says."""
  ose = _os_cause(e)
  if ose is not None:
    return os.strerror(ose.errno)
  text = str(e)
  for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
    if os.strerror(code) in text:
      return os.strerror(code)
  probe = path if os.path.isdir(path) else os.path.dirname(path)
  try:
    st = os.statvfs(probe)
    if st.f_bavail * st.f_frsize < (1 << 20):
      return os.strerror(errno.ENOSPC)
  except OSError:
    pass
  if os.path.isdir(probe) and not os.access(probe, os.W_OK):
    return os.strerror(errno.EACCES)
  return _one_line(e)


# ============================================================================ the checkpointer

class Checkpointer:
  """`workdir/checkpoints/<step>/{state,meta}`, keeping the `keep` newest verified checkpoints (keep >= 1)."""

  def __init__(self, workdir: str, keep: int = 3, verify_saves: bool = True, log=None):
    if keep < 1:
      raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}")
    self.workdir = os.path.abspath(workdir)
    self.dir = os.path.join(self.workdir, "checkpoints")
    self.keep, self.verify_saves = keep, verify_saves
    self.log = log or (lambda msg: print(msg, file=sys.stderr))
    opts = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False,
                                        cleanup_tmp_directories=True)
    try:
      self.mngr = ocp.CheckpointManager(self.dir, options=opts, item_names=("state", "meta"))
    except Exception as e:   # e.g. a read-only workdir: the directory cannot be created
      raise CheckpointSaveError(f"cannot create the checkpoint directory {self.dir}: {_save_cause(e, self.dir)}") \
          from e

  def latest_step(self):
    """Newest step on disk (not yet verified), or None."""
    return self.mngr.latest_step()

  def all_steps(self):
    return sorted(self.mngr.all_steps())

  def step_dir(self, step):
    return os.path.join(self.dir, str(step))

  # ------------------------------------------------------------------------ save
  def save(self, step: int, state, meta: dict):
    """state: pytree of jax arrays; meta: JSON-serialisable dict. Blocks until written and verified.

    Raises NonFiniteStateError (nothing written) or CheckpointSaveError (partial write removed, older
    checkpoints intact). Older checkpoints beyond `keep` are deleted only after this one verifies.
    """
    fps, bad = state_stats(state)
    if bad:
      raise NonFiniteStateError(f"not saving checkpoint {self.step_dir(step)}: non-finite values in {_names(bad)}")
    meta = dict(meta, **{_INTEGRITY_KEY: {"format": 1, "fingerprints": fps}})
    try:
      self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=True)
      self.mngr.wait_until_finished()
    except Exception as e:
      cause = _save_cause(e, self.dir)
      self._remove_partial(step)
      raise CheckpointSaveError(f"saving checkpoint {self.step_dir(step)} failed: {cause}") from e
    if self.verify_saves:
      host_like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _key_data(state))
      try:
        self._restore(step, host_like, on_host=True)
      except DamagedCheckpointError as e:
        self._move_aside(step)
        raise CheckpointSaveError(f"checkpoint {self.step_dir(step)} did not verify after writing ({e}); "
                                  f"moved to {self._aside_dir()}") from e
    self._prune(keep_step=step)

  def _remove_partial(self, step):
    """Removes what a failed save left (Orbax's temporary folder or an uncommitted step folder)."""
    if jax.process_index() != 0 or not os.path.isdir(self.dir):
      return
    for name in os.listdir(self.dir):
      if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
    try:
      self.mngr.reload()
    except Exception:  # noqa: BLE001 - the listing is refreshed again by the next call
      pass

  def _prune(self, keep_step):
    """Deletes the oldest checkpoints so that `keep` remain (the one just verified among them)."""
    steps = [s for s in self.all_steps() if s != keep_step]
    for s in steps[:max(0, len(steps) - (self.keep - 1))]:
      self.mngr.delete(s)

  # ------------------------------------------------------------------------ restore
  def _restore(self, step, like, on_host=False):
    """-> (state, meta) of one checkpoint, verified; raises DamagedCheckpointError naming the step and why."""
    where = self.step_dir(step)
    abstract = like if on_host else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
    except Exception as e:   # Orbax/TensorStore raise many types for a damaged file
      raise DamagedCheckpointError(f"{where} does not restore ({_one_line(e)})") from e
    state, meta = out["state"], dict(out["meta"] or {})
    integrity = meta.pop(_INTEGRITY_KEY, None)
    fps, bad = state_stats(state, on_host=on_host)
    if bad:
      raise DamagedCheckpointError(f"{where} has non-finite values in {', '.join(bad[:3])}")
    if integrity is not None:
      want = integrity.get("fingerprints", {})
      if set(want) != set(fps):
        raise DamagedCheckpointError(f"{where} holds leaves {sorted(set(fps) ^ set(want))[:3]} that differ "
                                     f"from its saved list")
      wrong = [k for k in fps if fps[k] != want[k]]
      if wrong:
        raise DamagedCheckpointError(f"{where}: values of {', '.join(wrong[:3])} do not match the checksum "
                                     f"written with them")
    return state, meta

  def restore(self, step: int, like):
    """like: a pytree with the state's structure, shapes, dtypes and shardings -> (state, meta), verified."""
    return self._restore(step, like)

  def restore_latest(self, like):
    """-> (step, state, meta) of the newest checkpoint that verifies, or None when there is none on disk.

    Each damaged newer checkpoint gets one line on stderr and, once an older one has verified, is moved to
    `workdir/damaged_checkpoints/` (its step will be written again). If none verifies, nothing is moved and
    DamagedCheckpointError lists them all (a wrong `like`, e.g. a changed model config, fails every step).
    """
    steps = self.all_steps()
    if not steps:
      return None
    damaged = []
    for step in reversed(steps):
      try:
        state, meta = self._restore(step, like)
      except DamagedCheckpointError as e:
        damaged.append((step, str(e)))
        older = [s for s in steps if s < step]
        self.log(f"checkpoint damaged: {e}; "
                 + (f"falling back to step {older[-1]}" if older else "no older checkpoint"))
        continue
      for s, _ in damaged:
        self._move_aside(s)
      return step, state, meta
    raise DamagedCheckpointError(f"no usable checkpoint in {self.dir}: "
                                 + "; ".join(f"step {s}: {why}" for s, why in damaged))

  def _aside_dir(self):
    return os.path.join(self.workdir, "damaged_checkpoints")

  def _move_aside(self, step):
    if jax.process_index() == 0:
      os.makedirs(self._aside_dir(), exist_ok=True)
      dst = os.path.join(self._aside_dir(), f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
      shutil.move(self.step_dir(step), dst)
      self.log(f"moved damaged checkpoint {self.step_dir(step)} to {dst}")
    self.mngr.reload()

  def close(self):
    self.mngr.close()


def snapshot_path(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), "ref_snapshots", f"step_{step}")


_SNAPSHOT_FINGERPRINTS = "fingerprints.json"   # beside the Orbax files of a snapshot: {leaf path: uint32}


def save_snapshot(path: str, params):
  """Writes a params pytree to `path` (overwriting: a resumed run may redo a reset), with the fingerprint of every
  leaf in `path/fingerprints.json` (written by process 0 after the Orbax files), which `load_snapshot` checks."""
  fps, bad = state_stats(params)
  if bad:
    raise NonFiniteStateError(f"not saving reference snapshot {path}: non-finite values in {_names(bad)}")
  ckptr = ocp.StandardCheckpointer()
  try:
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
      tmp = os.path.join(path, _SNAPSHOT_FINGERPRINTS + ".tmp")
      with open(tmp, "w") as f:
        json.dump({"format": 1, "fingerprints": fps}, f)
      os.replace(tmp, os.path.join(path, _SNAPSHOT_FINGERPRINTS))
  except Exception as e:
    raise CheckpointSaveError(f"saving reference snapshot {path} failed: {_save_cause(e, path)}") from e


def load_snapshot(path: str, like):
  """-> params pytree restored from `path` with the structure/shardings of `like`, verified against the
  fingerprints written with it (DamagedCheckpointError, one line, if it does not restore or does not match;
  a snapshot written before fingerprints existed is only checked for finite values)."""
  try:
    params = ocp.StandardCheckpointer().restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
  except Exception as e:   # Orbax/TensorStore raise many types for a damaged file
    raise DamagedCheckpointError(f"reference snapshot {path} does not restore ({_one_line(e)})") from e
  fps, bad = state_stats(params)
  if bad:
    raise DamagedCheckpointError(f"reference snapshot {path} has non-finite values in {', '.join(bad[:3])}")
  fp_file = os.path.join(path, _SNAPSHOT_FINGERPRINTS)
  if os.path.exists(fp_file):
    try:
      with open(fp_file) as f:
        want = json.load(f)["fingerprints"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DamagedCheckpointError(f"reference snapshot {fp_file} is unreadable ({_one_line(e)})") from e
    wrong = sorted(k for k in set(fps) | set(want) if fps.get(k) != want.get(k))
    if wrong:
      raise DamagedCheckpointError(f"reference snapshot {path}: values of {', '.join(wrong[:3])} do not match "
                                   f"the checksum written with them")
  return params
