"""The SDAR network (Qwen3 decoder with explicit masks and positions)."""
from t3d_jax.models.sdar import (KVCache, RopeTable, SDAR, SDARConfig, abstract_params,
                                 forward, forward_with_cache, init_params, logical_axes,
                                 write_cache)

__all__ = ["KVCache", "RopeTable", "SDAR", "SDARConfig", "abstract_params", "forward",
           "forward_with_cache", "init_params", "logical_axes", "write_cache"]
