"""Block-diffusion sampling: decoding config, logits processing, transfer strategies,
the jitted block loop (``generate`` / ``make_generate``) and batched, multi-process
decoding of many prompts (``decode``)."""
from t3d_jax.sampling.batched import DecodeStats, decode, decode_part
from t3d_jax.sampling.config import (COMMIT_MODES, PROMPT_MODES, STRATEGIES, DecodeConfig,
                                     DecodeError, transfer_schedule)
from t3d_jax.sampling.sampler import decode_params, generate, make_generate

__all__ = ["COMMIT_MODES", "PROMPT_MODES", "STRATEGIES", "DecodeConfig", "DecodeError",
           "DecodeStats", "decode", "decode_params", "decode_part", "generate",
           "make_generate", "transfer_schedule"]
