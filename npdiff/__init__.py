"""npdiff: diffusion models from scratch in NumPy, with every gradient written by hand.

The public API, in the order of a run: build (``Diffusion``, or ``Denoiser`` + ``Schedule`` + an objective),
train (``fit`` with ``Adam``/``AdamW``, ``EMA``, ``cosine_lr``), sample (``sample`` through a reverse chain:
``EpsilonChain``, ``SohlDicksteinChain``), evaluate (``exact_bound``, ``mc_bound``, ``eq14_bound``, and the
``metrics`` module). ``data`` has the heart and the toy sets. Every name is also importable from its module.
"""

from npdiff import data, metrics
from npdiff.processes.ddpm import EpsilonChain, EpsilonObjective
from npdiff.diffusion import Diffusion
from npdiff.processes.hybrid import HybridObjective
from npdiff.processes.likelihood import Bound, eq14_bound, exact_bound, mc_bound
from npdiff.nn.denoiser import Denoiser
from npdiff.nn.optim import EMA, Adam, AdamW, cosine_lr
from npdiff.processes.sampling import sample
from npdiff.processes.schedules import Schedule
from npdiff.processes.sohl_dickstein import BoundObjective, SohlDicksteinChain
from npdiff.training.train import History, fit

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "Bound", "BoundObjective", "Denoiser", "Diffusion", "EMA", "EpsilonChain", "EpsilonObjective",
    "History", "HybridObjective", "Schedule", "SohlDicksteinChain", "cosine_lr", "data", "eq14_bound", "exact_bound",
    "fit", "mc_bound", "metrics", "sample",
]
