"""Measurements of a trained model, pure of training and of studies: the bootstrap, the statistics
and fits, per-position losses, the truncation ablation, context use at the kept steps (history),
FLOPs per token."""
