"""The decoder: the ``config.decode`` section as one value, built the same way by rollout,
eval, the distill refresh, the API and the benches.

    decoder = Decoder.from_config(config.decode, ids, model_cfg)   # + the mesh it implies
    results = decoder.decode(params, prompt_ids, rng)               # batched, multi-process
    fast = decoder.with_settings(denoising_steps=1)                 # shares its compilations

It carries the :class:`DecodeConfig` (what each sequence's tokens depend on), the
:class:`Batching` keys (how prompts are grouped into calls) and the mesh
(``decode.data_parallel``: each batch split over this host's devices), and owns its
compiled executables per decode setting and batch shape (:class:`batched.Executables`):
nothing is cached on functions or globally, and dropping the decoder frees them. The
traced knobs (threshold, temperature, ...) reuse one compilation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from t3d_jax.errors import InputError
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.sampling import batched
from t3d_jax.sampling.config import Batching, DecodeConfig


def decode_mesh(batching: Batching) -> Optional[Mesh]:
  """With ``data_parallel``: a 1-axis ('data') mesh over this process's devices, each
  batch split over it (params replicated); else None (one device)."""
  if not batching.data_parallel:
    return None
  devices = jax.local_devices()
  if batching.batch_size % len(devices):
    raise InputError(f"config decode.batch_size={batching.batch_size} is not a multiple of "
                     f"the {len(devices)} local devices (decode.data_parallel=True)")
  return Mesh(np.array(devices), ("data",))


class Decoder:
  """Decodes many prompts with one decode setting (see the module doc)."""

  def __init__(self, cfg: SDARConfig, dcfg: DecodeConfig, batching: Batching = Batching(),
               mesh: Optional[Mesh] = None,
               executables: Optional[batched.Executables] = None):
    dcfg.validate(cfg.vocab_size)
    self.cfg, self.dcfg, self.batching, self.mesh = cfg, dcfg, batching, mesh
    self.executables = executables if executables is not None else batched.Executables(
        cfg, mesh)

  @classmethod
  def from_config(cls, section, ids, cfg: SDARConfig, *,
                  executables: Optional[batched.Executables] = None,
                  **overrides) -> "Decoder":
    """From the ``config.decode`` section, a tokenizer's special ids and the model
    config; ``overrides`` replace DecodeConfig fields (a bad value: one line naming it).
    ``executables``: compilations to share with other decoders of the same model config
    and mesh (eval's models)."""
    batching = Batching.of(section)
    mesh = decode_mesh(batching) if executables is None else executables.mesh
    return cls(cfg, DecodeConfig.from_config(section, ids, **overrides), batching, mesh,
               executables)

  def with_settings(self, **overrides) -> "Decoder":
    """The same decoder at other DecodeConfig values (eval's settings), sharing its
    compiled executables."""
    return Decoder(self.cfg, dataclasses.replace(self.dcfg, **overrides), self.batching,
                   self.mesh, self.executables)

  def decode(self, params, prompts: Sequence[Sequence[int]], rng, *,
             batch_size: Optional[int] = None,
             progress: Optional[Callable[[int], None]] = None,
             stats: Optional[batched.DecodeStats] = None,
             sample_ids: Optional[Sequence[tuple[int, int]]] = None) -> list[dict]:
    """Every prompt decoded, in input order (:func:`batched.decode`: every process takes
    part and gets every result); ``batch_size`` overrides the section's (a multiple of
    the mesh's devices)."""
    return batched.decode(params, self.cfg, prompts, self.dcfg, rng,
                          batch_size=batch_size or self.batching.batch_size,
                          width_multiple=self.batching.width_multiple, mesh=self.mesh,
                          progress=progress, stats=stats, sample_ids=sample_ids,
                          executables=self.executables)
