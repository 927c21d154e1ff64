"""The network and its gradients: what a learner reads first.

primitives (small fast operations, each with its plain formula), layers (Linear, activations, LayerNorm,
Residual, Sequential: every backward under its forward), embeddings (timestep, coordinate and label),
flat (one contiguous parameter buffer), denoiser (the MLP ε_θ(x_t, t[, y])), losses (softmax cross-entropy),
optim (Adam, AdamW, clipping, EMA, learning-rate schedules), gradcheck (central finite differences).
Imports NumPy (through ``npdiff.backend``) and nothing else.
"""
