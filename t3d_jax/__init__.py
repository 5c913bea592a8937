"""t3d_jax: T3D few-step distillation of block-diffusion LMs (SDAR) in JAX/Flax."""
__version__ = "0.1.0"
