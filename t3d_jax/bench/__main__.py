"""Dispatch ``python -m t3d_jax.bench <subcommand> ...`` to ``<module>.main(argv)``.

Add a subcommand by adding its module path to SUBCOMMANDS; the module defines
``main(argv: list[str]) -> int`` and parses its own flags.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "sampler": "t3d_jax.bench.sampler",
    "step": "t3d_jax.bench.step",
    "convert": "t3d_jax.bench.convert",
    "memory": "t3d_jax.bench.memory",
    "load": "t3d_jax.bench.load",
    "code_grader": "t3d_jax.bench.code_grader",
    "hostile": "t3d_jax.bench.hostile",
    "dtype_agreement": "t3d_jax.bench.dtype_agreement",
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
    print(f"usage: python -m t3d_jax.bench {{{','.join(sorted(SUBCOMMANDS))}}} [flags]",
          file=sys.stderr)
    if argv and argv[0] not in ("-h", "--help"):
      print(f"unknown subcommand {argv[0]!r}", file=sys.stderr)
      return 2
    return 0
  return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
  sys.exit(main())
