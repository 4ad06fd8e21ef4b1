"""Random initialisation and a tiny Llama with a character tokenizer (tests, smoke runs; offline).

    model = random_decoder(cfg, seed)                 # any DecoderConfig, N(0, 0.02) weights, unit norms
    model, tok = tiny_llama(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)

`CharTokenizer` answers the parts of the Hugging Face tokenizer interface the rest of the project uses
(`tok(text)["input_ids"]`, `decode`, `eos_token_id`, `pad_token_id`, `bos_token_id`, `len(tok)`).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.transformer import Decoder, DecoderConfig, param_shapes


class CharTokenizer:
  """Character-level tokenizer: ids 0..2 are <pad>, <bos>, <eos>; then one id per character of `chars`."""

  chat_template = None   # no chat template: prompts are the plain text after <bos>

  def __init__(self, chars="0123456789+-=?"):
    self.specials = ["<pad>", "<bos>", "<eos>"]
    self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
    self.chars = chars
    self._id = {ch: i + len(self.specials) for i, ch in enumerate(chars)}

  def __len__(self):
    return len(self.specials) + len(self.chars)

  @property
  def vocab_size(self):
    return len(self)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._id[ch] for ch in text]
    except KeyError as e:
      raise ValueError(f"toy tokenizer: character {e.args[0]!r} not in its vocabulary {self.chars!r}") from None

  def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
    """Like a transformers tokenizer: {"input_ids": [<bos>] + ids} (no <bos> with add_special_tokens=False)."""
    return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + self.encode(text)}

  def decode(self, ids, skip_special_tokens=True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i < len(self.specials):
        if not skip_special_tokens:
          out.append(self.specials[i])
      else:
        out.append(self.chars[i - len(self.specials)])
    return "".join(out)


def random_decoder(cfg: DecoderConfig, seed: int) -> Decoder:
  """A Decoder with N(0, 0.02) weights and unit norms drawn with NumPy (no per-parameter XLA compilations)."""
  r = np.random.default_rng(seed)
  init = lambda shape, norm: (np.ones(shape) if norm else 0.02 * r.standard_normal(shape)).astype(np.float32)
  pure = {"embed": init((cfg.vocab_size, cfg.hidden_size), False), "final_norm": init((cfg.hidden_size,), True),
          "layers": {k: init((cfg.num_layers, *s), k.endswith("norm")) for k, s in param_shapes(cfg).items()}}
  if not cfg.tie_embeddings:
    pure["lm_head"] = init((cfg.hidden_size, cfg.vocab_size), False)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, state)


def tiny_llama(*, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
               dtype="float32", param_dtype=None, remat=False, seed=0) -> tuple[Decoder, CharTokenizer]:
  """A random Llama over the `CharTokenizer` vocabulary -> (Decoder, CharTokenizer).
  param_dtype: None = dtype; remat: rematerialise each layer in the backward pass (DecoderConfig)."""
  tok = CharTokenizer()
  hf = dict(   # the fields of a transformers LlamaConfig / config.json (no transformers import needed)
      model_type="llama", vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
      max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
      tie_word_embeddings=False)
  cfg = DecoderConfig.from_hf(hf, dtype=dtype, param_dtype=param_dtype, remat=remat)
  return random_decoder(cfg, seed), tok
