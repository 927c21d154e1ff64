"""The diffusion math: the forward process and every reverse process, their objectives, samplers and bounds.

betas and schedules (the forward process q), gaussian (log-densities, KL), predictions (ε, x̂_0 or v and the
conversions between them), ddpm (the ε objective and the ε-model's reverse chain), hybrid (learned-range
variance), sohl_dickstein (the learned mean/variance chain and the bound K), guidance (class labels,
classifier-free guidance), conditioning (Sohl-Dickstein §2.5), oracles (exact chains for Gaussian data),
sampling (the one sampler), likelihood (bounds in nats and bits), and the continuous-time view: ode (the
probability-flow ODE and its solvers), flow (flow matching), ode_likelihood (log p(x_0) of the ODE).
Imports NumPy and ``npdiff.nn`` only.
"""
