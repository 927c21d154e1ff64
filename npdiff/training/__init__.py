"""Training: the loop that reads as Algorithm 1, the guarded runner around it (non-finite rollback,
signals, progress), and checkpoints."""
