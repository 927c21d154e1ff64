"""The diffusion math: the forward process and every reverse process, their objectives, sampler and bounds.

betas and schedules (the forward process q), gaussian (log-densities, KL), ddpm (the ε objective and the
ε-model's reverse chain), hybrid (learned-range variance), sohl_dickstein (the learned mean/variance chain and
the bound K), guidance (class labels, classifier-free guidance), conditioning (Sohl-Dickstein §2.5), oracles
(exact chains for Gaussian data), sampling (the one sampler), likelihood (bounds in nats and bits).
Imports NumPy and ``npdiff.nn`` only.
"""
