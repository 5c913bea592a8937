"""The numerics keys of ``config.model`` (dtype, param_dtype, remat, attention) as one value,
checked and applied to a model config in one place (:meth:`Numerics.apply`).

The config section is generated from this dataclass (config_base), so its defaults live
here only. "" in a field keeps what the model dir or HF dir holds (the benches use it).
"""
from __future__ import annotations

import dataclasses

from t3d_jax.dtypes import as_dtype
from t3d_jax.errors import InputError
from t3d_jax.models.sdar import SDARConfig, check_numerics


@dataclasses.dataclass(frozen=True)
class Numerics:
  dtype: str = "float32"        # compute dtype: float32 | bfloat16
  param_dtype: str = "float32"  # master params (fp32 master + bf16 compute: the TPU default)
  remat: str = "dots"           # backward recomputes: none | dots (non-matmul ops) | full
  attention: str = "auto"       # kernel: dense | splash (TPU block-sparse) | cudnn (GPU
                                # flash, bf16) | auto (splash on TPU, else dense)

  def __post_init__(self):
    for key in ("dtype", "param_dtype"):  # which of the two: "unknown dtype" does not say
      try:
        as_dtype(getattr(self, key) or "float32")
      except (TypeError, ValueError) as e:
        raise InputError(f"config.model.{key}: {e}") from None
    try:
      check_numerics(self.dtype or "float32", self.param_dtype or "float32",
                     self.remat or "none", self.attention or "dense")
    except (TypeError, ValueError) as e:
      raise InputError(f"config.model: {e}") from None

  @classmethod
  def of(cls, section) -> "Numerics":
    """From a ``config.model`` section (a bad value: one line naming config.model)."""
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in section})

  def apply(self, cfg: SDARConfig, *, train: bool) -> SDARConfig:
    """``cfg`` with this compute dtype and kernel, and the remat policy when ``train``
    (decoding never differentiates; its compiled program stays the one it was). The
    param dtype is applied where the weights are loaded (they are cast there)."""
    kw = dict(dtype=self.dtype, attention=self.attention,
              remat=self.remat if train else None)
    return cfg.replace(**{k: v for k, v in kw.items() if v})
