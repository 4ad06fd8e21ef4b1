"""Every method is a registry entry: name -> advantage function + keep mask + the settings it needs.

    alg = algorithms.REGISTRY[config.algo]
    adv, keep = alg.advantages(reward, correct, group_size, config.adv)   # f32 [N], bool [N]
    config = rl.config.base(algo)            # applies alg.settings (e.g. Dr.GRPO's loss.agg) to the defaults

Rows are prompt-major (row i*G+j = sample j of prompt i), N = P*G. `settings` are dotted config keys that
define the method (Dr.GRPO's unnormalised advantages and constant normaliser, PSR/NSR's REINFORCE loss, ...):
they live here and nowhere else; `rl.config.base(algo)` applies them and `rl.config.validate` rejects a config
that contradicts them. `rollout=False` (SFT)
trains on the gold solutions instead of samples.

`postprocess(config, batch)` runs the whole step between rollout and update: reward shaping (relative length
reward, overlong penalty), the registered advantages and keep masks, and the DASH gradient filter.
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from rl import advantages as adv_lib
from rl import shaping


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """advantages(reward f32 [N], correct bool [N], group_size G, adv_cfg) -> (adv f32 [N], keep bool [N])."""
  advantages: Callable
  settings: dict = dataclasses.field(default_factory=dict)   # dotted config key -> value (see rl.config.base)
  rollout: bool = True    # False: the batch is the gold solutions (SFT), no sampling
  group_relative: bool = True   # advantages compare samples of a group: group_size 1 makes them all 0
  doc: str = ""


def _grpo(reward, correct, G, ac):
  return adv_lib.grpo_advantages(reward, G, normalize_std=ac.normalize_std), jnp.ones(reward.shape, bool)


def _signed(keep):
  def fn(reward, correct, G, ac):
    a, _ = _grpo(reward, correct, G, ac)
    return a, adv_lib.sign_mask(a, keep=keep)
  return fn


def _rloo(reward, correct, G, ac):
  return adv_lib.rloo_advantages(reward, G), jnp.ones(reward.shape, bool)


def _psr_nsr(mode):
  return lambda reward, correct, G, ac: adv_lib.psr_nsr_advantages(correct, mode=mode, lam=ac.lam)


def _sft(reward, correct, G, ac):
  return jnp.ones(reward.shape, jnp.float32), jnp.ones(reward.shape, bool)


_REINFORCE = {"loss.loss_type": "reinforce"}   # -A * logp, as in the PSR/NSR paper (= PPO's gradient at ratio 1)

REGISTRY = {
    "grpo": Algorithm(_grpo, doc="GRPO: group-normalised advantages (PPO clip by default)"),
    "dr_grpo": Algorithm(_grpo, {"adv.normalize_std": False, "loss.agg": "seq-mean-token-sum-norm"},
                         doc="Dr.GRPO: mean-centred advantages (no std), constant max-length normaliser"),
    "rloo": Algorithm(_rloo, doc="REINFORCE leave-one-out baseline"),
    "psr": Algorithm(_psr_nsr("psr"), _REINFORCE, group_relative=False,
                     doc="PSR: +1 on correct samples, only those kept"),
    "nsr": Algorithm(_psr_nsr("nsr"), _REINFORCE, group_relative=False,
                     doc="NSR: -1 on incorrect samples, only those kept"),
    "w_reinforce": Algorithm(_psr_nsr("weighted"), _REINFORCE, group_relative=False,
                             doc="W-REINFORCE: +lam correct, -1 incorrect"),
    "positive_only": Algorithm(_signed("positive"), doc="GRPO advantages over the full group, A > 0 kept"),
    "negative_only": Algorithm(_signed("negative"), doc="GRPO advantages over the full group, A < 0 kept"),
    "gspo": Algorithm(_grpo, {"loss.loss_type": "gspo", "loss.agg": "seq-mean-token-mean"},
                      doc="GSPO: GRPO advantages, sequence-level length-normalised ratio with its own clip"),
    "cispo": Algorithm(_grpo, {"loss.loss_type": "cispo", "loss.agg": "token-mean"},
                       doc="CISPO: GRPO advantages, clipped stop-gradient IS weight on the REINFORCE term"),
    "sft": Algorithm(_sft, rollout=False, group_relative=False, doc="SFT on the gold solutions (advantage 1)"),
}


def shape_rewards(config, reward, lengths, correct):
  """config.shaping applied to reward f32 [N] (lengths int [N], correct bool [N]) -> f32 [N] numpy."""
  s, G = config.shaping, config.rollout.group_size
  r = jnp.asarray(reward)
  if s.relative_length:
    r = shaping.relative_length_reward(r, jnp.asarray(lengths), jnp.asarray(correct), G,
                                       rho=s.rlr_rho, scale=s.rlr_scale, low=s.rlr_low, high=s.rlr_high)
  if s.overlong_buffer:
    r = r + shaping.overlong_penalty(jnp.asarray(lengths), max_len=config.rollout.max_new_tokens,
                                     cache_len=s.overlong_buffer, factor=s.overlong_factor)
  return np.asarray(r, np.float32)


def postprocess(config, batch):
  """Rewards -> shaped rewards -> advantages and keep masks by config.algo -> DASH filter.

  batch: an rl.rollout.Batch (keep already False for groups the rollout could not fill).
  Returns (batch with shaped_reward, adv, keep set; info dict of filter metrics).
  """
  shaped = shape_rewards(config, batch.reward, batch.lengths, batch.correct)
  a, keep = REGISTRY[config.algo].advantages(jnp.asarray(shaped), jnp.asarray(batch.correct),
                                              config.rollout.group_size, config.adv)
  a, keep = np.array(a, np.float32), np.array(keep, bool) & batch.keep
  info = {"grad_filter/dropped_frac": 0.0}
  if config.filters.grad_filter_tau > 0:
    gf = np.array(adv_lib.gradient_filter_mask(jnp.asarray(a), config.filters.grad_filter_tau))
    info["grad_filter/dropped_frac"] = float(1.0 - (gf & keep).sum() / max(keep.sum(), 1))
    keep &= gf
  return batch._replace(shaped_reward=shaped, adv=a, keep=keep), info
