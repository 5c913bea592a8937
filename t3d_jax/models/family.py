"""Model families: what differs between architectures, one :class:`Family` entry each in
:data:`FAMILIES`; convert/, checkpoint and the sampler reach a model through its entry.

A family holds the Hugging Face ``model_type``\\ s it reads, its config class and the
config.json translation both ways, the tensor-name table (HF name <-> param path), the
network (``forward``, ``forward_with_cache``, ``init_params``, ...), its attention regime
and where a position's prediction is read:

  sdar   Qwen3 layers, block-causal attention, each position predicting its own token;
  llada  LLaMA layers (OLMo names), bidirectional, each position predicting its own token;
  dream  Qwen2 layers, bidirectional, the output at i predicting token i + 1.

The three share one network (:mod:`t3d_jax.models.sdar`, its flags set by the config
class); the attention regime picks the decoder (block loop over a KV cache, or the
whole-sequence canvas of :mod:`t3d_jax.sampling.canvas`).
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Iterator

from t3d_jax.errors import InputError
from t3d_jax.models import dream, llada, sdar, sdar_hf

ATTENTION = ("block_causal", "bidirectional")


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  model_types: tuple[str, ...]            # HF config.json model_type(s) it reads
  config_class: type                      # architecture + numerics (hashable, static)
  config_from_hf: Callable[[dict], Any]   # config.json dict -> config_class
  hf_config_from: Callable[[Any], dict]   # config -> a config.json for params without one
  tensors: Callable[[Any], Iterator]      # (hf name, row, layer or None) per tensor
  tensors_hf_order: Callable[[Any], list]  # the same in transformers' order (export)
  network: types.ModuleType               # forward, forward_with_cache, init_params, ...
  attention: str                          # one of ATTENTION: what a position attends to
  prediction_offset: int = 0              # position i's logits predict token i + offset

  def __post_init__(self):
    if self.attention not in ATTENTION:
      raise ValueError(f"family {self.name}: attention {self.attention!r} not in {ATTENTION}")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sdar", ("qwen3", "sdar"), sdar.SDARConfig, sdar_hf.config_from_hf,
           sdar_hf.hf_config_from, sdar_hf.entries, sdar_hf.hf_order_entries, sdar,
           attention="block_causal", prediction_offset=0),
    Family("llada", ("llada",), llada.LLaDAConfig, llada.config_from_hf,
           llada.hf_config_from, llada.entries, llada.hf_order_entries, sdar,
           attention="bidirectional", prediction_offset=0),
    Family("dream", ("Dream", "dream"), dream.DreamConfig, dream.config_from_hf,
           dream.hf_config_from, dream.entries, dream.hf_order_entries, sdar,
           attention="bidirectional", prediction_offset=1),
)}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise InputError(f"model family {name!r} is not one of {', '.join(FAMILIES)}")
  return FAMILIES[name]


def for_model_type(model_type, where: str) -> Family:
  """The family that reads a config.json of ``model_type`` (an InputError naming
  ``where`` and the supported types otherwise)."""
  for f in FAMILIES.values():
    if model_type in f.model_types:
      return f
  supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
  raise InputError(f"{where}: unsupported model_type {model_type!r}; supported: {supported}")


def of_config(cfg) -> Family:
  """The family whose config class ``cfg`` is."""
  for f in FAMILIES.values():
    if type(cfg) is f.config_class:  # exact: a subclass may be another family
      return f
  raise TypeError(f"{type(cfg).__name__} is no model family's config")


def config_to_json(cfg) -> dict:
  """A model dir's config record: the family's name and the config's fields."""
  return dict(family=of_config(cfg).name, **dataclasses.asdict(cfg))


def config_from_json(record: dict):
  """Inverse of :func:`config_to_json` (a record without ``family`` is SDAR's: model
  dirs written before families were recorded)."""
  record = dict(record)
  return get(record.pop("family", "sdar")).config_class(**record)


def arch_config(arch, vocab_size: int = 0, param_dtype: str = "float32"):
  """The model config of a ``config.arch`` section (its ``family``'s config class;
  ``vocab_size`` fills an arch vocab_size of 0), an InputError naming the key otherwise."""
  fields = dict(arch)
  name = fields.pop("family", "sdar")
  if name not in FAMILIES:
    raise InputError(f"config arch.family={name!r} is not one of {', '.join(FAMILIES)}")
  fam = FAMILIES[name]
  fields["vocab_size"] = fields.get("vocab_size") or vocab_size
  try:
    return fam.config_class(**fields, param_dtype=param_dtype)
  except (TypeError, ValueError) as e:
    raise InputError(f"config arch: {e}") from None
