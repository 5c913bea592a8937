"""Evaluation: answer grading, decoding metrics (accuracy, NFE, TPF, tokens/s, AUP), plots."""
