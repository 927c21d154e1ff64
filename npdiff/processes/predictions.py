"""What an ε-model network predicts, and the conversions that turn its prediction into ε_θ or x̂_0.

Shape glossary: N batch, D data dims; x_t (N, D), t (N,), f_θ (N, D) the network's prediction.

A network trained through q_sample, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM Eq. 4), may predict one of three
targets (``PREDICTIONS``); at a fixed x_t each determines the other two, by the schedule's conversions:

    "eps"  ε_θ = f_θ;                         x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε_θ     (Eq. 4 solved for x_0)
    "x0"   x̂_0 = f_θ;                         ε_θ = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t)
    "v"    v = √ᾱ_t ε − √(1−ᾱ_t) x_0:          ε_θ = √(1−ᾱ_t) x_t + √ᾱ_t f_θ,  x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) f_θ
                                                                                   (Salimans & Ho 2022, Sec. 4)

``target`` is what the network learns to output; ``eps_theta`` and ``x0_hat`` feed the reverse process
(``ddpm.EpsilonChain``): its mean is DDPM's Eq. 11 in ε_θ, and DDIM steps through both.
"""

from __future__ import annotations

from npdiff.processes.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")  # what the network outputs


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def target(schedule: Schedule, prediction: str, x0, t, noise):
    """What the network should output for x_t = q_sample(x0, t, noise): ε, x_0 or v.  -> (N, D)"""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return schedule.v_target(x0, t, noise)


def eps_theta(schedule: Schedule, prediction: str, x_t, t, f_theta):
    """ε_θ from the network's prediction f_θ: f_θ itself, or converted from x̂_0 or v.  -> (N, D)"""
    if prediction == "eps":
        return f_theta
    if prediction == "x0":
        return schedule.eps_from_x0(x_t, t, f_theta)
    return schedule.eps_from_v(x_t, t, f_theta)


def x0_hat(schedule: Schedule, prediction: str, x_t, t, f_theta):
    """x̂_0 from the network's prediction f_θ: converted from ε_θ or v, or f_θ itself.  -> (N, D)"""
    if prediction == "eps":
        return schedule.predict_x0(x_t, t, f_theta)
    if prediction == "x0":
        return f_theta
    return schedule.x0_from_v(x_t, t, f_theta)
