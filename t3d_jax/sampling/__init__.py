"""Block-diffusion sampling: decoding config, logits processing, transfer strategies,
the jitted decoders (``generate`` / ``make_generate``: the block loop for SDAR, the
canvas for LLaDA and Dream) and batched, multi-process
decoding of many prompts (``decode``), and the :class:`Decoder` that carries the decode
section as one value."""
from t3d_jax.sampling.batched import DecodeStats, decode, decode_part
from t3d_jax.sampling.config import (CACHES, COMMIT_MODES, PROMPT_MODES, STRATEGIES, Batching,
                                     DecodeConfig, DecodeError, transfer_schedule)
from t3d_jax.sampling.decoder import Decoder
from t3d_jax.sampling.sampler import decode_params, generate, make_generate

__all__ = ["CACHES", "COMMIT_MODES", "PROMPT_MODES", "STRATEGIES", "Batching", "DecodeConfig",
           "DecodeError", "DecodeStats", "Decoder", "decode", "decode_params", "decode_part",
           "generate", "make_generate", "transfer_schedule"]
