"""kdgate's distillation side: teacher data, KD losses, the training recipe, evaluation and the demo task."""
