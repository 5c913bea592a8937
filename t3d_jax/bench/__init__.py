"""Benchmarks: ``python -m t3d_jax.bench <subcommand> [flags]`` (see __main__)."""
