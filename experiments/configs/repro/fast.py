"""The fast reproduction testbed (experiments/reproduce.py --scale fast): a tiny Llama (width 64, 2 layers, the
character tokenizer) first taught two-number sums ("47+38=" -> "85", half the gold solutions with a units-column
scratchpad "7+8=15?85") by SFT, then trained by each arm of a study from that shared SFT base. Minutes per arm on
2 CPU cores; the held-out problems are evaluated with n = 128 samples each (pass@k for k = 1 .. 128).

  get_config(algo)   the RL config of one arm before the study's own overrides (GRPO settings otherwise)
  sft_config()       the SFT run that makes the base (once per study workdir; every arm starts from its hf/)
"""
import ml_collections

from rl import config

SFT_STEPS = 400   # base pass@1 ~0.2, pass@16 ~0.8 (measured: 300 -> 0.11, 500 -> 0.38, 700 -> 0.46)


def _testbed(c):
  c.model.hidden_size, c.model.num_layers, c.model.intermediate_size = 64, 2, 128
  c.task.name = "toy_sum"
  c.task.kwargs = ml_collections.ConfigDict(dict(max_a=99, max_b=99, scratch_frac=0.5, eval_size=200, seed=0))
  c.task.num_eval = 64
  c.rollout.max_new_tokens = 12          # "7+8=15?185" + EOS fits
  c.eval.n_samples = 128
  c.eval.prompts_per_call = 16
  c.eval.temperature = 1.0
  c.log.samples_every = 0
  c.log.samples_printed = 0
  c.export_hf = False
  return c


def get_config(algo="grpo"):
  c = _testbed(config.base(algo))
  c.rollout.prompts_per_step, c.rollout.group_size = 16, 8
  c.optim.lr = 1e-3
  c.total_steps = 60
  c.eval_every = 30
  c.checkpoint_every = 30
  return c.lock()


def sft_config():
  c = _testbed(config.base("sft"))
  c.rollout.group_size = 1
  c.rollout.prompts_per_step = 64
  c.optim.lr = 3e-3
  c.total_steps = SFT_STEPS
  c.checkpoint_every = 100
  c.eval_every = 0
  c.eval_at_start = False
  c.eval.n_samples = 16
  c.export_hf = True                     # workdir/hf: the base every arm starts from (config.model.init_from)
  return c.lock()
