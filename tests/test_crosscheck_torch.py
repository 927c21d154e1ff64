"""Cross-check against PyTorch autograd: the whole denoiser and the ε objective, gradient for gradient.

The model is ``benchmarks/torch_reference.py``'s mirror of ``npdiff.nn.denoiser.Denoiser``, run in float64 with
npdiff's weights and frequencies; every parameter's dL/dθ from npdiff's hand-written backward must equal
autograd's. Skipped without torch, except under NPDIFF_CROSSCHECK=1 (CI), where torch must be installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from npdiff.processes.ddpm import EpsilonObjective
from npdiff.nn.denoiser import Denoiser
from npdiff.processes.schedules import Schedule

ARCHITECTURES = [dict(hidden=16, n_blocks=2, emb_dim=8, layernorm=True, final_layernorm=True),
                 dict(hidden=12, n_blocks=1, emb_dim=6, layernorm=False, final_layernorm=False)]


@pytest.mark.parametrize("n", [7, 600])  # 600 rows with few distinct t: the per-timestep first layer
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_epsilon_objective_gradients_equal_pytorch_autograd(crosscheck, arch, n):
    torch = crosscheck("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import torch_reference

    schedule, rng = Schedule(50), np.random.default_rng(0)
    model = Denoiser(2, coord_scale=25.0, time_scale=1.0, dtype="float64", seed=1, **arch)
    x0, noise, t = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)), rng.integers(1, 51, n)
    model.zero_grad()
    loss = EpsilonObjective(schedule).loss_and_backward(model, x0, t=t, noise=noise)

    reference = torch_reference.Denoiser(2, coord_scale=25.0, time_scale=1.0, **arch).double()
    reference.load_from(model)
    reference.coord_emb.omega = torch.from_numpy(np.array(model.coord_emb.omega))  # float64, as npdiff's
    reference.time_emb.omega = torch.from_numpy(np.array(model.time_emb.sinusoidal.omega))
    x_t = torch.from_numpy(schedule.q_sample(x0, t, noise))
    ref_loss = torch.nn.functional.mse_loss(reference(x_t, torch.from_numpy(t)), torch.from_numpy(noise))
    ref_loss.backward()
    # float64 sums over up to 600 rows in different orders: ≲ n·ε ≈ 7e-14 relative for the positive loss, and
    # ≲ n·ε·max|g| absolute for a gradient entry that cancels towards 0, hence an atol scaled by each array
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)

    grads = model.gradients()
    pairs = [(reference.inp, "inp.0"), (reference.out, "out")]
    pairs += [(block.fc, f"blocks.{i}.fn.{int(arch['layernorm'])}") for i, block in enumerate(reference.blocks)]
    def assert_equal_in_float64(ours, theirs):
        atol = 10 * n * np.finfo(np.float64).eps * np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=atol)

    for module, key in pairs:
        assert_equal_in_float64(grads[key + ".W"], module.weight.grad.numpy().T)
        assert_equal_in_float64(grads[key + ".b"], module.bias.grad.numpy())
    if arch["layernorm"]:
        assert_equal_in_float64(grads["norm.gamma"], reference.norm.weight.grad.numpy())
        assert_equal_in_float64(grads["blocks.0.fn.0.beta"], reference.blocks[0].norm.bias.grad.numpy())
