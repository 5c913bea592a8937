"""T3D distillation, what is T3D's own: trajectory examples (examples), DDO and path losses
(losses), the T3D micro-batch loss and step (step), trajectory rows to batches (data)."""
