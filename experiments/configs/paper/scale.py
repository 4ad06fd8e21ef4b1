"""What every paper-scale config shares: a local HF checkpoint in bfloat16 compute with float32 master
weights and AdamW moments, per-layer rematerialisation, FSDP over all chips. Not a config file itself:
`base(algo)` is `rl.config.base(algo)` with these settings, each config file changes the rest."""
import ml_collections

from rl import config


def base(algo="grpo"):
  c = config.base(algo)
  c.model.source = "hf"
  c.model.path = ""              # set --config.model.path=/path/to/hf_checkpoint (config.json + safetensors)
  c.model.dtype = "bfloat16"     # matmul operands
  c.model.param_dtype = "float32"   # f32 master weights and moments (bf16 weights would drop lr-1e-6 updates)
  c.model.remat = True
  c.task.name = "parquet"          # MATH train/test parquet files: --config.task.kwargs.path=... eval_path=...
  c.task.kwargs = ml_collections.ConfigDict(dict(path="", eval_path="", format="math"))
  c.task.num_eval = 500
  c.optim.lr = 1e-6
  c.optim.grad_clip = 1.0
  c.optim.weight_decay = 0.0
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1   # FSDP over every chip
  c.eval_every = 20
  c.checkpoint_every = 10
  return c
