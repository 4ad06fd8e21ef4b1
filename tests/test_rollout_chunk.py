"""rollout.chunk_size (issue 15): the sampler's decode chunk picked from max_new_tokens when 0. That the samples
do not depend on the chunking (same keys) is tests/test_sampling.py::test_chunked_compacted_decode_equals_single_loop."""
import pytest

from rl import config, rollout


def test_sampler_chunk():
  # auto: the sampler's default chunk (two chunks of 32 were slower than one of 64 at N=64 on the idle CPU)
  assert [rollout.sampler_chunk(0, n) for n in (8, 64, 65, 128, 200, 256, 4096)] == [128] * 7
  assert rollout.sampler_chunk(7, 64) == 7   # set explicitly: as given
  c = config.base("grpo")
  assert c.rollout.chunk_size == 0
  c.rollout.chunk_size = -1
  with pytest.raises(ValueError, match="rollout.chunk_size"):
    config.validate(c)
