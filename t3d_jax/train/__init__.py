"""Training below any one method: the generic trainer (trainer, sharded), what every
[prompt | x0 | xt] objective shares (examples, logprobs), the pretraining objective
(pretrain), the resumable loop (loop) and the one recipe the training modes call (recipe)."""
