"""Digests: what a resumed run must share with the run that wrote its files."""
from __future__ import annotations

import array
import hashlib
import json
from collections.abc import Iterable


def fingerprint(settings) -> str:
  """A short digest of JSON-able settings: what a resumed run must share with the run
  that wrote its checkpoints / rows / summaries."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_digest(rows: Iterable[Iterable]) -> str:
  """sha256 (16 hex) of a dataset's content: each row a sequence of fields, each field a
  string or a sequence of ints (token ids, step maps). Order and boundaries count."""
  h = hashlib.sha256()
  for row in rows:
    for field in row:
      if isinstance(field, str):
        data = field.encode()
        h.update(b"s%d:" % len(data))
      else:
        data = array.array("q", field).tobytes()
        h.update(b"i%d:" % len(data))
      h.update(data)
    h.update(b";")
  return h.hexdigest()[:16]
