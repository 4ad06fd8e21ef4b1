"""Negative-sample reinforcement at paper scale (Zhu et al. 2025, "The Surprising Effectiveness of Negative
Reinforcement in LLM Reasoning"): Qwen2.5-Math-7B on MATH, 8 samples per prompt, lr 1e-6, PPO clip 0.2,
token-mean, no KL. The paper's other arms are other algos: edit `scale.base("nsr")` to "psr" / "w_reinforce" /
"grpo" (algo fixes loss.loss_type, see rl.algorithms.REGISTRY, so it cannot be flipped by --config.algo alone).

  python -m experiments.plan --model experiments/model_configs/qwen2.5-math-7b.json --topology v5p:2x2x2 \
      --config experiments/configs/paper/nsr_qwen2.5_math_7b.py
Mesh: FSDP over all chips (scale.base). Memory (compiled for v5p:2x2x2, planner version 6, docs/scaling.md): update
27.4, log-probs 6.4, sampler 30.4 GiB per chip (of 95; 16.9 by XLA's own count): fits. On v6e:2x4 (32 GiB chips):
update 29.2, log-probs 6.3, sampler 30.3 GiB (with the planner's gathered-weights margin): fits, at the limit. Not on
v5e (16 GiB).
"""
from experiments.configs.paper import scale


def get_config():
  c = scale.base("nsr")
  # loss.loss_type = "reinforce" (set by rl.algorithms.REGISTRY["nsr"]): -A * logp, the gradient of the
  # paper's PPO-clip objective at ratio 1; the clip below only matters to the other arms (grpo)
  c.loss.clip_low = c.loss.clip_high = 0.2
  c.loss.agg = "token-mean"
  c.loss.kl_kind, c.loss.kl_coef = "none", 0.0
  c.rollout.prompts_per_step = 64
  c.rollout.group_size = 8
  c.rollout.max_new_tokens = 3072     # + <=1024 prompt tokens = Qwen2.5-Math's 4096-token context
  c.rollout.temperature = 1.0
  c.train.minibatches = 4             # 4 updates of 128 samples per step
  c.train.micro_batch_size = 8        # one sample per chip per accumulation increment on 8 chips
  c.total_steps = 200
  return c.lock()
