"""Data: JSONL io, shipped question/answer sets, tokenizers, TFDS builders, iteration."""
