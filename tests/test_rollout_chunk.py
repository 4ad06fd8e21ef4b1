"""rollout.chunk_size (issue 15): the sampler's decode chunk picked from max_new_tokens when 0. That the samples
do not depend on the chunking (same keys) is tests/test_sampling.py::test_chunked_compacted_decode_equals_single_loop."""
import pytest

from rl import config, rollout


def test_sampler_chunk():
  # auto: half of N as a power of two within 32..128, so short rollouts get >= 2 chunks (compaction between them)
  assert [rollout.sampler_chunk(0, n) for n in (8, 64, 65, 128, 200, 256, 4096)] == [32, 32, 32, 64, 128, 128, 128]
  assert rollout.sampler_chunk(7, 64) == 7   # set explicitly: as given
  c = config.base("grpo")
  assert c.rollout.chunk_size == 0
  c.rollout.chunk_size = -1
  with pytest.raises(ValueError, match="rollout.chunk_size"):
    config.validate(c)
