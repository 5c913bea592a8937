"""T3D distillation: training examples (examples), losses (losses)."""
