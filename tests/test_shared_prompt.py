"""The update's FLOP cuts in models.transformer (issue 15): the LM head only over the response positions
(`token_logprobs(..., start)`) and the shared-prompt forward (`shared_prompt_logprobs`), each against the plain
full-sequence `token_logprobs` of the row-expanded batch: the same log-probs, entropies and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models

U, G, L, T = 3, 4, 10, 9


@pytest.fixture(scope="module")
def tiny():
  model, _ = models.tiny_llama(seed=1)
  return nnx.split(model, nnx.Param)


def batch(seed=0):
  """U left-padded prompts (one with a single token), G ragged responses each (one of length 0 and one full),
  rows in a scrambled prompt order -> (prompt, prompt_mask, prompt_idx, tokens, mask)."""
  r = np.random.default_rng(seed)
  plen = np.array([L, 1, 6])
  prompt_mask = np.arange(L)[None] >= (L - plen)[:, None]
  prompt = np.where(prompt_mask, r.integers(3, 17, (U, L)), 0).astype(np.int32)
  idx = r.permutation(np.repeat(np.arange(U), G)).astype(np.int32)
  rlen = r.integers(1, T + 1, U * G)
  rlen[0], rlen[1] = 0, T
  mask = np.arange(T)[None] < rlen[:, None]
  tokens = np.where(mask, r.integers(3, 17, (U * G, T)), 0).astype(np.int32)
  return prompt, prompt_mask, idx, tokens, mask


def reference(model, prompt, prompt_mask, idx, tokens, mask, **kw):
  """Every position of the expanded rows through the LM head, then the response columns (the old path)."""
  full = jnp.concatenate([prompt[idx], tokens], 1)
  attn = jnp.concatenate([prompt_mask[idx], mask], 1)
  logp, ent = model.token_logprobs(full[:, :-1], full[:, 1:], attention_mask=attn[:, :-1], **kw)
  return logp[:, -T:], ent[:, -T:]


@pytest.mark.parametrize("warp", [{}, pytest.param(dict(temperature=0.7, top_k=5, top_p=0.9),
                                                   marks=pytest.mark.slow)])
def test_head_only_over_the_response_and_shared_prompt(tiny, warp):
  graphdef, params = tiny
  model = nnx.merge(graphdef, params)
  prompt, prompt_mask, idx, tokens, mask = batch()
  ref_lp, ref_ent = reference(model, prompt, prompt_mask, idx, tokens, mask, **warp)
  full = jnp.concatenate([prompt[idx], tokens], 1)
  attn = jnp.concatenate([prompt_mask[idx], mask], 1)
  lp, ent = model.token_logprobs(full[:, :-1], full[:, 1:], attention_mask=attn[:, :-1], start=L - 1, **warp)
  assert lp.shape == ent.shape == (U * G, T)
  np.testing.assert_allclose(lp, ref_lp, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(ent, ref_ent, atol=1e-6, rtol=1e-6)
  lp, ent = model.shared_prompt_logprobs(prompt, prompt_mask, idx, tokens, mask, **warp)
  m = mask   # padding positions after a response are meaningless on both paths
  np.testing.assert_allclose(np.where(m, lp, 0), np.where(m, ref_lp, 0), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.where(m, ent, 0), np.where(m, ref_ent, 0), atol=2e-5, rtol=1e-5)
  assert np.abs(np.where(m, ref_lp, 0)).max() > 1.0   # not trivially zero


def test_shared_prompt_gradient(tiny):
  """The gradient of a masked sum of log-probs and entropies: prompt computations shared by several rows get
  the sum of their rows' gradients."""
  graphdef, params = tiny
  prompt, prompt_mask, idx, tokens, mask = batch(1)
  w = np.random.default_rng(2).normal(size=tokens.shape).astype(np.float32) * mask

  def loss(params, shared):
    model = nnx.merge(graphdef, params)
    if shared:
      lp, ent = model.shared_prompt_logprobs(prompt, prompt_mask, idx, tokens, mask)
    else:
      lp, ent = reference(model, prompt, prompt_mask, idx, tokens, mask)
    return jnp.sum(w * lp) + 0.1 * jnp.sum(w * ent)

  g_ref = jax.grad(loss)(params, False)
  g = jax.grad(loss)(params, True)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_ref))
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)))
  assert scale > 1e-3 and diff < 1e-5 * scale


def packed(seed):
  """`batch(seed)` ordered by prompt and packed by rl.update.pack_minibatch into one micro-batch -> (prompt [U',L],
  prompt_mask, prompt_idx [C], tokens [C,T], mask [C,T], pack dict, alive bool [C]); C >= U*G rows (padding rows
  after the real ones are copies with keep False)."""
  from rl import update
  prompt, prompt_mask, idx, tokens, mask = batch(seed)
  order = np.argsort(idx, kind="stable")
  n = len(order)
  sub = dict(prompt=prompt[idx][order], prompt_mask=prompt_mask[idx][order], tokens=tokens[order],
             mask=mask[order], keep=np.ones(n, bool))
  mb = update.pack_minibatch(sub, n, n, 1)
  pack = {k[3:]: v[0] for k, v in mb.items() if k.startswith("pk_")}
  return (mb["prompt"][0], mb["prompt_mask"][0], mb["prompt_idx"][0], mb["tokens"][0], mb["mask"][0], pack,
          mb["keep"][0])


def test_pack_minibatch_layout():
  """Every response exactly once, whole, in one packed row of its own prompt, segments never overlapping, fewer
  packed rows than responses (the short ones share rows)."""
  prompt, prompt_mask, pidx, tokens, mask, pack, alive = packed(0)
  R, W = pack["tok"].shape
  assert alive.sum() == U * G and W == T and R == U * G
  assert (pack["seg"] >= 0).any(1).sum() < U * G   # packed rows in use
  seen = np.zeros((R, W), int)
  for b in np.nonzero(alive)[0]:
    n = max(int(np.nonzero(mask[b])[0].max()) if mask[b].any() else 0, 1)   # input slots: last valid index
    r, o = pack["row"][b], pack["off"][b]
    assert pack["prompt"][r] == pidx[b]
    np.testing.assert_array_equal(pack["tok"][r, o:o + n], tokens[b, :n])
    np.testing.assert_array_equal(pack["tgt"][r, o:o + n], tokens[b, 1:n + 1])
    np.testing.assert_array_equal(pack["ok"][r, o:o + n], mask[b, :n])
    assert (pack["seg"][r, o:o + n] == b).all()
    seen[r, o:o + n] += 1
  assert seen.max() == 1 and ((seen == 1) == (pack["seg"] >= 0)).all()


def test_packed_responses_equal_the_expanded_rows(tiny):
  """`packed_prompt_logprobs` against the row-expanded full-sequence `token_logprobs`: log-probs, entropies and
  the gradient of a masked sum of both, at the valid response positions."""
  graphdef, params = tiny
  prompt, prompt_mask, pidx, tokens, mask, pack, alive = packed(1)
  m = mask & alive[:, None]
  w = np.random.default_rng(3).normal(size=tokens.shape).astype(np.float32) * m

  def run(params, pk):
    model = nnx.merge(graphdef, params)
    if pk:
      return model.packed_prompt_logprobs(prompt, prompt_mask, pidx, tokens, mask, pack)
    return reference(model, prompt, prompt_mask, pidx, tokens, mask)

  (lp, ent), (ref_lp, ref_ent) = run(params, True), run(params, False)
  np.testing.assert_allclose(np.where(m, lp, 0), np.where(m, ref_lp, 0), atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.where(m, ent, 0), np.where(m, ref_ent, 0), atol=2e-5, rtol=1e-5)
  assert np.abs(np.where(m, ref_lp, 0)).max() > 1.0
  loss = lambda p, pk: jnp.sum(w * run(p, pk)[0]) + 0.1 * jnp.sum(w * run(p, pk)[1])
  g, g_ref = jax.grad(loss)(params, True), jax.grad(loss)(params, False)
  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_ref))
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g, g_ref)))
  assert scale > 1e-3 and diff < 1e-5 * scale
