"""ProRL at paper scale (Liu et al. 2025): a 1.5B Qwen2.5-Math architecture (DeepSeek-R1-Distill-Qwen-1.5B
has the same shapes), 16 samples per prompt at temperature 1.2, decoupled clip 0.2/0.4, k3 KL to a reference
that is reset periodically (with the optimizer), DAPO dynamic sampling, 8k-token responses.

  python -m experiments.plan --model experiments/model_configs/qwen2.5-math-1.5b.json --topology v6e:2x4 \
      --config experiments/configs/paper/prorl_qwen2.5_math_1.5b.py
Mesh: FSDP over all chips (scale.base). Memory (compiled, planner version 6, docs/scaling.md): update 10.6 GiB,
log-probs 2.5 GiB per chip on v5e:2x4 and v6e:2x4; the sampler's last chunk holds 512 rows x 8192 slots of KV =
14 GiB per chip, 15.6 GiB in all by XLA's count, 18.2 with the planner's gathered-weights margin: fits v6e:2x4
(32 GiB chips), not v5e's 16 GiB by the planner's count. Use v6e:2x4 / v5p:2x2x2, or on v5e:2x4 set
--config.rollout.prompts_per_step=16 (the sampler pads prompts to a power of two).
"""
from experiments.configs.paper import scale


def get_config():
  c = scale.base()
  c.loss.agg = "token-mean"
  c.loss.clip_low, c.loss.clip_high = 0.2, 0.4
  c.loss.kl_kind, c.loss.kl_coef = "k3", 1e-4
  c.filters.dynamic_sampling = True
  c.filters.max_extra_draws = 2
  c.ref.reset_every = 200
  c.ref.reset_patience = 0
  c.ref.reset_optimizer = True
  c.rollout.prompts_per_step = 32
  c.rollout.group_size = 16           # 512 rows per sampler call
  c.rollout.max_new_tokens = 8192
  c.rollout.temperature = 1.2
  c.train.minibatches = 4             # 4 updates of 128 samples per step
  c.train.micro_batch_size = 8
  c.optim.lr = 2e-6
  c.total_steps = 1000
  return c.lock()
