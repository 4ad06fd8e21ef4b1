"""Orbax checkpoints of the trainer state, and policy snapshots for ProRL reference resets.

The trainer state is one pytree of arrays (params, opt_state, ref_params, step, rng) plus a small JSON dict
(data iterator position, reference source, eval history). Saves go through an Orbax `CheckpointManager`, which
writes to a temporary directory and renames it when complete, so a crash mid-save leaves the previous
checkpoint usable.
"""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """`workdir/checkpoints/<step>/{state,meta}`, keeping the last `keep` checkpoints."""

  def __init__(self, workdir: str, keep: int = 3):
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                        cleanup_tmp_directories=True)
    self.mngr = ocp.CheckpointManager(self.dir, options=opts, item_names=("state", "meta"))

  def latest_step(self):
    return self.mngr.latest_step()

  def save(self, step: int, state, meta: dict):
    """state: pytree of jax arrays; meta: JSON-serialisable dict. Blocks until written."""
    self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                   force=True)
    self.mngr.wait_until_finished()

  def restore(self, step: int, like):
    """like: a pytree with the state's structure, shapes, dtypes and shardings -> (state, meta)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def close(self):
    self.mngr.close()


def snapshot_path(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), "ref_snapshots", f"step_{step}")


def save_snapshot(path: str, params):
  """Writes a params pytree to `path` (overwriting: a resumed run may redo a reset)."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, params, force=True)
  ckptr.wait_until_finished()


def load_snapshot(path: str, like):
  """-> params pytree restored from `path` with the structure/shardings of `like`."""
  return ocp.StandardCheckpointer().restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
