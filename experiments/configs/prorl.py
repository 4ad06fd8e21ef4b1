"""ProRL: decoupled clip 0.2/0.4, k3 KL penalty to a reference, DAPO dynamic sampling, reference resets."""
from rl import config


def get_config():
  c = config.base()
  c.loss.agg = "token-mean"
  c.loss.clip_low, c.loss.clip_high = 0.2, 0.4
  c.loss.kl_kind, c.loss.kl_coef = "k3", 1e-2
  c.rollout.temperature = 1.2     # ProRL samples at 1.2; the trainer's log-probs use the same temperature
  c.filters.dynamic_sampling = True
  c.filters.max_extra_draws = 2
  c.ref.reset_every = 20          # hard reset of the reference (and optimizer) every N steps ...
  c.ref.reset_patience = 2        # ... or when eval pass@1 has not improved for 2 evaluations
  c.ref.reset_optimizer = True
  c.eval_every = 10
  return c.lock()
