"""The peer: SDAR's published ``generate.py`` (JetAstra/SDAR, block_diffusion_generate)
re-implemented on stock transformers Qwen3, for ``bench sampler --peer sdar``.

The algorithm is the release's, step for step: prefill the whole prompt blocks, then per
block up to s denoising forwards of the block against the cache (the release's
``store_kv=False``) and one more forward that writes the finished block's KV
(``store_kv=True``); each step reveals the schedule's n tokens (b split evenly over s, the
first steps taking the remainder) chosen by the remasking strategy. The only change:
stock transformers has no ``store_kv`` switch, so a denoising forward appends its KV to
the ``DynamicCache`` and the port crops it off again. Greedy (temperature 0) takes the
argmax with its softmax probability as the confidence, as t3d_jax does; the release
always samples (``torch.multinomial``) and has no greedy path.

Kept from the release: the step's n is not clamped to the masks left, so at s < b a block
that starts with prompt-tail tokens (prompt length % b != 0) reveals n positions even when
fewer are masked and overwrites prompt-tail tokens (t3d_jax clamps: docs/method.md §6).
``batch > 1`` is the "patched" release: the same code with x of shape [B, ...], valid
only for prompts of one length (the release decodes one prompt per call).
"""
from __future__ import annotations

import inspect
import tempfile

import numpy as np
import torch

STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic")


def torch_model(params, cfg):
  """A transformers Qwen3ForCausalLM (fp32, sdpa, eval) holding ``params``: written with
  t3d_jax's HF export, read back by transformers."""
  import transformers

  from t3d_jax.convert.hf import save_hf_params
  transformers.utils.logging.disable_progress_bar()
  with tempfile.TemporaryDirectory() as d:
    save_hf_params(params, cfg, d, dtype="float32")
    model = transformers.Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32)
  model.config._attn_implementation = "sdpa"
  return model.eval()


def transfer_schedule(block: int, steps: int) -> list[int]:
  """Tokens revealed per step: b // s each, the first b % s steps one more."""
  return [block // steps + (1 if i < block % steps else 0) for i in range(steps)]


def _choose(strategy, x0_p, masked, n, threshold):
  """[B, b] bool: the positions this step reveals (the release's per-row loops)."""
  conf = torch.where(masked, x0_p, torch.tensor(-torch.inf))
  pick = torch.zeros_like(masked)
  for j in range(masked.shape[0]):
    if strategy == "sequential":
      if masked[j].any():
        first = int(masked[j].nonzero()[0, 0])
        pick[j, first:first + n] = True
    elif strategy == "low_confidence_static":
      pick[j, torch.topk(conf[j], n).indices] = True
    elif strategy == "low_confidence_dynamic":
      high = conf[j] > threshold
      if int(high.sum()) >= n:
        pick[j] = high
      else:
        pick[j, torch.topk(conf[j], n).indices] = True
    else:
      raise ValueError(f"sdar_port: unknown strategy {strategy!r} (one of {STRATEGIES})")
  return pick


@torch.no_grad()
def generate(model, prompt_ids: np.ndarray, mask_id: int, gen_length: int = 128,
             block_length: int = 4, denoising_steps: int = 4,
             strategy: str = "low_confidence_static", threshold: float = 0.85):
  """Decode prompts ``prompt_ids`` [B, P] (one length) greedily; returns (generated ids
  [B, gen_length], forwards run, [B] bool: the row had prompt-tail tokens overwritten)."""
  from transformers.cache_utils import DynamicCache
  ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long)
  batch, plen = ids.shape
  b = block_length
  cache = DynamicCache()
  num_blocks = (plen + gen_length + b - 1) // b
  total = num_blocks * b
  block_mask = torch.tril(torch.ones(num_blocks, num_blocks, dtype=torch.bool))
  attend = block_mask.repeat_interleave(b, 0).repeat_interleave(b, 1)  # [total, total]
  positions = torch.arange(total)[None].expand(batch, -1)
  x = torch.full((batch, total), mask_id, dtype=torch.long)
  x[:, :plen] = ids
  # transformers renamed past_key_values to cache (deprecated from 5.24)
  cache_kw = ("cache" if "cache" in inspect.signature(model.forward).parameters
              else "past_key_values")
  forwards = 0
  overwrote = torch.zeros(batch, dtype=torch.bool)

  def forward(tokens, lo, hi, keep):
    nonlocal forwards
    forwards += 1
    mask = attend[lo:hi, :hi][None, None].expand(batch, 1, -1, -1)
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions[:, lo:hi],
                use_cache=True, **{cache_kw: cache})
    if not keep:  # the release's store_kv=False: drop the KV this forward appended
      cache.crop(-(hi - lo))
    return out.logits

  prefill_blocks = plen // b
  if prefill_blocks:
    forward(x[:, :prefill_blocks * b], 0, prefill_blocks * b, keep=True)
  schedule = transfer_schedule(b, denoising_steps)
  for blk in range(prefill_blocks, num_blocks):
    lo, hi = blk * b, (blk + 1) * b
    cur = x[:, lo:hi].clone()
    for step in range(denoising_steps + 1):
      masked = cur == mask_id
      if not masked.any():
        forward(cur, lo, hi, keep=True)
        break
      probs = torch.softmax(forward(cur, lo, hi, keep=False).float(), dim=-1)
      x0_p, x0 = probs.max(dim=-1)
      pick = _choose(strategy, x0_p, masked, schedule[step], threshold)
      overwrote |= (pick & ~masked).any(-1)
      cur[pick] = x0[pick]
    x[:, lo:hi] = cur
  return x[:, plen:plen + gen_length].numpy(), forwards, overwrote.numpy()
