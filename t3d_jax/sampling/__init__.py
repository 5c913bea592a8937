"""Block-diffusion sampling: decoding config, logits processing, transfer strategies,
and the jitted block loop (``generate``)."""
from t3d_jax.sampling.config import (COMMIT_MODES, PROMPT_MODES, STRATEGIES, DecodeConfig,
                                     DecodeError, transfer_schedule)
from t3d_jax.sampling.sampler import generate, make_generate

__all__ = ["COMMIT_MODES", "PROMPT_MODES", "STRATEGIES", "DecodeConfig", "DecodeError",
           "generate", "make_generate", "transfer_schedule"]
