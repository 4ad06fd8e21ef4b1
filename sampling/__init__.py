"""Jit-compiled group sampler with a KV cache (see sampling/sampler.py)."""

from sampling.sampler import (SampleOutput, bucket, generate, left_pad, num_compilations, sample_logits,
                              top_k_mask, top_p_mask)

__all__ = ["SampleOutput", "bucket", "generate", "left_pad", "num_compilations", "sample_logits", "top_k_mask",
           "top_p_mask"]
