"""The decoder network all model families share (Qwen3 / LLaMA / Qwen2 layers with
explicit masks and positions) and the families' config classes (models/family.py)."""
from t3d_jax.models.sdar import (KVCache, RopeTable, SDAR, SDARConfig, abstract_params,
                                 forward, forward_with_cache, init_params, logical_axes,
                                 write_cache)
from t3d_jax.models.dream import DreamConfig
from t3d_jax.models.llada import LLaDAConfig

__all__ = ["DreamConfig", "KVCache", "LLaDAConfig", "RopeTable", "SDAR", "SDARConfig",
           "abstract_params", "forward", "forward_with_cache", "init_params", "logical_axes",
           "write_cache"]
