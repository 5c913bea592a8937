"""Block-diffusion sampling: decoding config, logits processing, transfer strategies,
the jitted block loop (``generate`` / ``make_generate``) and rollout batching."""
from t3d_jax.sampling.config import (COMMIT_MODES, PROMPT_MODES, STRATEGIES, DecodeConfig,
                                     DecodeError, transfer_schedule)
from t3d_jax.sampling.rollout import rollout
from t3d_jax.sampling.sampler import generate, make_generate

__all__ = ["COMMIT_MODES", "PROMPT_MODES", "STRATEGIES", "DecodeConfig", "DecodeError",
           "generate", "make_generate", "rollout", "transfer_schedule"]
