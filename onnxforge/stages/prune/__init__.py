"""Structured pruning of PyTorch models before export (stage.py: options + run; channels.py: the pruner)."""
