"""Flax NNX decoder LMs (Llama / Qwen2 / Qwen3) with Hugging Face / GGUF loading."""

from models.transformer import Decoder, DecoderConfig
from models import sharding
from models.loading import (load_pretrained, save_pretrained, smollm2_gguf_path, from_hf_state_dict, to_hf_state_dict,
                            resolve_path, hub_cache_dir)
from models.tiny import CharTokenizer, random_decoder, tiny_llama

__all__ = ["Decoder", "DecoderConfig", "load_pretrained", "save_pretrained", "smollm2_gguf_path",
           "from_hf_state_dict", "to_hf_state_dict", "resolve_path", "hub_cache_dir", "sharding", "CharTokenizer",
           "random_decoder", "tiny_llama"]
