"""One perturbation / step implementation for every estimator: clipping, zero steps, masks,
loss-level SPSA through real plugins against references, and the estimator registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepafx.chain import chain
from deepafx.fx import ESTIMATORS, FxLayer, spsa_loss_gradient
from deepafx.losses import MultiResolutionSTFTLoss
from deepafx.spsa import gradient_from_differences, perturb

SR = 44100
# gain → tanh distortion → gain: smooth in all three parameters, with an exact torch twin
DRIVE = chain(
    {"backend": "pedalboard.Gain", "name": "pre"},
    {"backend": "pedalboard.Distortion", "name": "dist"},
    {"backend": "pedalboard.Gain", "name": "post"},
    sample_rate=SR, name="gain-drive-gain",
)
GAIN = chain({"backend": "pedalboard.Gain", "name": "g"}, {"backend": "pedalboard.Gain", "name": "h"}, sample_rate=SR)


def drive_twin(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Torch twin of DRIVE: ``x (B, C, N)``, normalized ``p (B, 3)`` → ``(B, C, N)``."""
    pre_db = -24.0 + 48.0 * p[:, 0]
    drive_db = 40.0 * p[:, 1]
    post_db = -24.0 + 48.0 * p[:, 2]
    inner = 10.0 ** ((pre_db + drive_db) / 20.0)
    return 10.0 ** (post_db / 20.0)[:, None, None] * torch.tanh(inner[:, None, None] * x)


def log_energy_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-item squared log-energy difference of 256-sample frames: smooth, non-linear in the audio, cheap."""
    def log_energy(a):
        return torch.log(a.double().unfold(-1, 256, 256).pow(2).mean(-1) + 1e-6)

    return (log_energy(y) - log_energy(target)).pow(2).mean((1, 2))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _drive_problem(batch: int = 4, samples: int = 4096):
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(batch, 2, samples, generator=g)
    p = 0.2 + 0.6 * torch.rand(batch, 3, generator=g)
    p_target = 0.2 + 0.6 * torch.rand(batch, 3, generator=g)
    target = drive_twin(x.double(), p_target.double()).float()
    return x, p, target


# --------------------------------------------------------------------------- shared perturbation


def test_perturb_clips_at_the_edges_and_steps_are_the_actual_differences():
    theta = torch.tensor([[0.0, 1.0, 0.004, 0.998, 0.5], [0.3, 0.0, 1.0, 0.5, 0.009]], dtype=torch.float64)
    eps, k = 0.01, 64
    pert = perturb(theta, eps, "spsa", k, generator=torch.Generator().manual_seed(11))
    # the draw order is pinned: one randint (batch, K, P) from the generator
    delta = (torch.randint(0, 2, (2, k, 5), generator=torch.Generator().manual_seed(11)) * 2 - 1).double()
    torch.testing.assert_close(pert.plus, (theta[:, None] + eps * delta).clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(pert.minus, (theta[:, None] - eps * delta).clamp(0, 1), rtol=0, atol=0)
    assert pert.plus.min() >= 0 and pert.plus.max() <= 1 and pert.minus.min() >= 0 and pert.minus.max() <= 1
    torch.testing.assert_close(pert.step, pert.plus - pert.minus, rtol=0, atol=0)
    # |step| = min(θ + ε, 1) − max(θ − ε, 0), signed like Δ
    expected = (theta + eps).clamp(max=1) - (theta - eps).clamp(min=0)
    torch.testing.assert_close(pert.step.abs(), expected[:, None].expand(-1, k, -1), rtol=0, atol=1e-15)
    assert torch.equal(pert.step.sign(), delta)
    assert float(pert.step[0, :, 0].abs().max()) == pytest.approx(eps)  # θ = 0: one-sided step ε, not 2ε
    assert float(pert.step[0, :, 4].abs().max()) == pytest.approx(2 * eps)
    assert pert.num_draws == k and pert.num_renders == k


def test_finite_differences_are_unit_vectors_with_clipped_diagonal_steps():
    theta = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    pert = perturb(theta, 0.01, "fd")
    assert pert.num_renders == 3 and pert.num_draws == 1
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.all(pert.step[0][off] == 0)
    torch.testing.assert_close(pert.step[0].diagonal(), torch.tensor([0.01, 0.02, 0.01], dtype=torch.float64))
    # a linear function's gradient is recovered (up to rounding) even at the edges
    a = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    d = (pert.plus - pert.minus) @ a  # L⁺ − L⁻ for L(θ) = a·θ
    torch.testing.assert_close(gradient_from_differences(d, pert.step, pert.num_draws)[0], a, rtol=1e-12, atol=1e-12)


def test_zero_step_gives_zero_gradient_and_others_are_mean_ratios():
    step = torch.tensor([[[0.02, 0.0, -0.01], [-0.02, 0.0, 0.01]]], dtype=torch.float64)
    diff = torch.tensor([[0.3, -0.1]], dtype=torch.float64)
    g = gradient_from_differences(diff, step, 2)
    assert torch.isfinite(g).all() and g[0, 1] == 0
    torch.testing.assert_close(g[0, 0], torch.tensor((0.3 / 0.02 + -0.1 / -0.02) / 2, dtype=torch.float64))
    torch.testing.assert_close(g[0, 2], torch.tensor((0.3 / -0.01 + -0.1 / 0.01) / 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="differences"):
        gradient_from_differences(diff[0], step, 2)


def test_free_mask_is_respected_and_leaves_the_draws_unchanged():
    g0 = torch.Generator().manual_seed(4)
    theta = torch.rand(3, 6, generator=g0, dtype=torch.float64)
    free = torch.tensor([True, False, True, True, False, True])
    masked = perturb(theta, 0.01, "spsa", 2, free, torch.Generator().manual_seed(9))
    full = perturb(theta, 0.01, "spsa", 2, None, torch.Generator().manual_seed(9))
    assert torch.equal(masked.plus[..., ~free], theta[:, None, ~free].expand(-1, 2, -1))
    assert torch.equal(masked.minus[..., ~free], theta[:, None, ~free].expand(-1, 2, -1))
    assert torch.all(masked.step[..., ~free] == 0)
    assert torch.equal(masked.step[..., free], full.step[..., free])
    g = gradient_from_differences(torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64), masked.step, masked.num_draws)
    assert torch.all(g[:, ~free] == 0)
    torch.testing.assert_close(g[:, free], 0.5 / masked.step[:, 0, free], rtol=0, atol=0)
    per_item = torch.zeros(3, 6, dtype=torch.bool)
    per_item[1, 2] = True
    only = perturb(theta, 0.01, "spsa", 2, per_item, torch.Generator().manual_seed(9))
    assert int((only.step != 0).sum()) == 2 and torch.all(only.step[1, :, 2] != 0)
    with pytest.raises(ValueError, match="free"):
        perturb(theta, 0.01, "spsa", 2, free[:5])
    with pytest.raises(ValueError, match="method"):
        perturb(theta, 0.01, "rademacher")


def test_per_parameter_sizes_scale_each_step_and_keep_the_estimate_unbiased():
    """ε per parameter: the same Rademacher signs, each parameter's step its own 2ε, and the mean estimate of a
    linear loss still its gradient (the difference is divided by each parameter's own step)."""
    theta = torch.full((1, 4), 0.5, dtype=torch.float64)
    eps = torch.tensor([0.01, 0.05, 0.01, 0.2], dtype=torch.float64)
    one = perturb(theta, 0.01, "spsa", 3, generator=torch.Generator().manual_seed(2))
    per = perturb(theta, eps, "spsa", 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(per.step, one.step / 0.01 * eps, rtol=1e-12, atol=0)
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    many = perturb(theta, eps, "spsa", 20000, generator=torch.Generator().manual_seed(0))
    g = gradient_from_differences(many.step @ a, many.step, many.num_draws)[0]
    # unbiased, but a parameter's estimate carries the others' terms scaled by ε_j / ε_i: its noise grows
    # where its own size is the smaller one (standard deviation over N draws: sqrt(Σ_j≠i (a_j ε_j / ε_i)²) / √N)
    ratio = eps[None, :] / eps[:, None]
    sd = ((a[None, :] * ratio) ** 2 * (1 - torch.eye(4, dtype=torch.float64))).sum(1).sqrt() / 20000 ** 0.5
    assert torch.all((g - a).abs() < 4 * sd)
    assert sd[3] < 0.01 < 0.3 < sd[0]  # the largest size is estimated best, the smallest worst
    for bad in (torch.tensor([0.01, 0.0, 0.01, 0.01]), torch.full((3,), 0.01), -0.01, 0.0):
        with pytest.raises(ValueError, match="epsilon"):
            perturb(theta, bad, "spsa", 2)


def test_spsa_average_recovers_a_linear_gradient():
    """Pure arithmetic: E[(a·(θ⁺ − θ⁻)) / (θ⁺_i − θ⁻_i)] = a_i, clipping included."""
    theta = torch.tensor([[0.0, 0.3, 1.0, 0.7]], dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    pert = perturb(theta, 0.01, "spsa", 20000, generator=torch.Generator().manual_seed(0))
    g = gradient_from_differences(pert.step @ a, pert.step, pert.num_draws)[0]
    assert float((g - a).norm() / a.norm()) < 0.03


# --------------------------------------------------------------------------- VJP estimators use it


def test_vjp_layer_renders_the_shared_perturbation():
    x, p, _ = _drive_problem(batch=2, samples=1024)
    with FxLayer(DRIVE, batch_size=2, num_workers=1, num_perturbations=3, seed=21, epsilon=0.02) as fx:
        fx(x, p.clone().requires_grad_(True)).sum().backward()
        rows = torch.from_numpy(fx.last_render_params)
    pert = perturb(p.double(), 0.02, "spsa", 3, generator=torch.Generator().manual_seed(21))
    assert torch.equal(rows[:, 1:4], pert.plus) and torch.equal(rows[:, 4:], pert.minus)


def test_finite_differences_on_a_real_chain_match_the_autodiff_twin():
    x, p, target = _drive_problem()
    forward = FxLayer(DRIVE, batch_size=4, num_workers=1)
    with forward:
        forward.eval()
        np.testing.assert_allclose(forward(x, p).numpy(), drive_twin(x, p).numpy(), atol=2e-6)
    loss = MultiResolutionSTFTLoss(fft_sizes=(512, 128))
    pt = p.double().clone().requires_grad_(True)
    loss(drive_twin(x.double(), pt), target.double()).backward()
    with FxLayer(DRIVE, batch_size=4, num_workers=1, estimator="fd", epsilon=1e-3) as fd:
        pp = p.clone().requires_grad_(True)
        loss(fd(x, pp), target).backward()
    rel = float((pp.grad.double() - pt.grad).norm() / pt.grad.norm())
    assert rel < 1e-2, rel


# --------------------------------------------------------------------------- loss-level SPSA


def test_loss_spsa_equals_a_straightforward_rederivation():
    """Draws, clipping, masks, row order and denominators, re-derived with in-process renders and loops."""
    g = torch.Generator().manual_seed(3)
    b, k, eps = 3, 2, 0.02
    x = 0.1 * torch.randn(b, 2, 2048, generator=g)
    theta = torch.tensor([[0.0, 0.6, 0.3], [1.0, 0.2, 0.99], [0.5, 0.5, 0.5]])
    target = drive_twin(x, torch.full((b, 3), 0.45))
    free = torch.tensor([True, True, False])
    loss = MultiResolutionSTFTLoss(fft_sizes=(256, 64), reduction="none")
    with FxLayer(DRIVE, batch_size=4, num_workers=1) as fx:  # 15 renders in chunks of 4
        ours_loss, ours = spsa_loss_gradient(fx, theta, target, loss, eps, k, free, torch.Generator().manual_seed(8), audio=x)

        def grouped(y, t):
            return loss(y.flatten(0, 1), t.repeat_interleave(y.shape[1], 0)).reshape(y.shape[:2])

        grouped_loss, grouped_grad = spsa_loss_gradient(
            fx, theta, target, None, eps, k, free, torch.Generator().manual_seed(8), grouped_loss=grouped, audio=x
        )
    assert torch.equal(ours, grouped_grad) and torch.equal(ours_loss, grouped_loss)
    delta = (torch.randint(0, 2, (b, k, 3), generator=torch.Generator().manual_seed(8)) * 2 - 1).tolist()
    inst = DRIVE.build()
    ref = np.zeros((b, 3))
    for i in range(b):
        th = theta[i].double().tolist()

        def loss_at(values):
            row = torch.tensor(values, dtype=torch.float64).float().double().numpy()
            y = torch.from_numpy(inst.process(x[i].numpy(), row))[None]
            return float(loss(y, target[i : i + 1])[0])

        assert ours_loss[i].item() == pytest.approx(loss_at(th), rel=1e-6)
        for j in range(3):
            terms = []
            for kk in range(k):
                d = [delta[i][kk][m] if free[m] else 0 for m in range(3)]
                plus = [min(max(th[m] + eps * d[m], 0.0), 1.0) for m in range(3)]
                minus = [min(max(th[m] - eps * d[m], 0.0), 1.0) for m in range(3)]
                step = plus[j] - minus[j]
                terms.append(0.0 if step == 0 else (loss_at(plus) - loss_at(minus)) / step)
            ref[i, j] = sum(terms) / k
    assert np.all(ref[:, 2] == 0) and np.all(ours[:, 2].numpy() == 0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_loss_spsa_equals_vjp_spsa_for_a_loss_linear_in_the_audio():
    """Same Δ (same seed, same draw order): ``L⁺ − L⁻ = Σ w (y⁺ − y⁻)`` is exactly the VJP's ``s``."""
    x, p, _ = _drive_problem(batch=3, samples=2048)
    w = torch.randn(3, 2, 2048, generator=torch.Generator().manual_seed(1))
    k, eps = 2, 0.01
    with FxLayer(DRIVE, batch_size=3 * (1 + 2 * k), num_workers=1, num_perturbations=k, epsilon=eps, seed=5) as fx:
        pp = p.clone().requires_grad_(True)
        (fx(x, pp) * w).sum().backward()
        per_item, g_loss = spsa_loss_gradient(
            fx, p, torch.zeros_like(w), lambda y, _t: (y.double() * w.double().repeat_interleave(1 + 2 * k, 0)).sum((1, 2)),
            eps, k, generator=torch.Generator().manual_seed(5), audio=x,
        )
    torch.testing.assert_close(g_loss.float(), pp.grad, rtol=1e-4, atol=1e-3 * float(pp.grad.abs().max()))
    torch.testing.assert_close(per_item, (drive_twin(x.double(), p.double()) * w.double()).sum((1, 2)), rtol=1e-5, atol=1e-3)


def test_loss_spsa_through_a_real_layer_agrees_with_finite_differences():
    x, p, target = _drive_problem(samples=2048)
    loss_none = log_energy_loss
    with FxLayer(DRIVE, batch_size=4, num_workers=1, estimator="fd", epsilon=1e-3) as fd:
        pp = p.clone().requires_grad_(True)
        loss_none(fd(x, pp), target).sum().backward()
    g_fd = pp.grad.double()
    draws = []
    with FxLayer(DRIVE, batch_size=20, num_workers=1, seed=2) as fx:
        for _ in range(30):
            _, g = spsa_loss_gradient(fx, p, target, loss_none, 0.01, 2, audio=x)  # generator: fx.generator
            draws.append(g)
    avg = torch.stack(draws).mean(0)
    cos_avg = _cos(avg, g_fd)
    cos_single = float(np.mean([_cos(d, g_fd) for d in draws]))
    print(f"loss-SPSA vs FD: cosine of the 30-draw average {cos_avg:.3f}, mean single-draw cosine {cos_single:.3f}")
    assert cos_avg >= 0.95
    assert 0.5 < cos_single < cos_avg


def test_loss_spsa_rejects_a_reduced_loss_and_bad_shapes():
    x, p, target = _drive_problem(batch=2, samples=512)
    with FxLayer(GAIN, batch_size=6, num_workers=1) as fx:
        with pytest.raises(ValueError, match="reduction='none'"):
            spsa_loss_gradient(fx, p[:, :2], target, MultiResolutionSTFTLoss(fft_sizes=(64,)), 0.01, 1, audio=x)
        with pytest.raises(ValueError, match="loss_fn"):
            spsa_loss_gradient(fx, p[:, :2], target, None, 0.01, 1, audio=x)
        with pytest.raises(ValueError, match="same batch"):
            spsa_loss_gradient(fx, p[:1, :2], target, MultiResolutionSTFTLoss(reduction="none"), 0.01, 1, audio=x)


# --------------------------------------------------------------------------- registry


def test_estimators_are_chosen_by_name_from_a_registry():
    assert ESTIMATORS.names() == ["spsa", "fd"]
    assert ESTIMATORS.get("spsa")(num_perturbations=3).num_renders(7) == 3
    assert ESTIMATORS.get("fd")(num_perturbations=3).num_renders(7) == 7
    with pytest.raises(ValueError, match="unknown gradient estimator 'spsa2'; known: spsa, fd"):
        FxLayer(GAIN, batch_size=1, num_workers=1, estimator="spsa2")


# --------------------------------------------------------------------------- Dexed refinement


def test_spsa_refine_is_deterministic_for_a_seed_and_counts_renders():
    dexed = pytest.importorskip("dexed", reason="dexed-py not installed: scripts/install.sh installs it")
    from deepafx.hosts.dexed_host import DexedRenderer, normalized_from_preset_array, quantize_normalized
    from deepafx.recipes.dexed_matching.presets import sample_around
    from deepafx.recipes.dexed_matching.search import numeric_free_mask, spsa_refine

    r = DexedRenderer(16000, [(60, 100)], 0.25, 0.5)
    voice = normalized_from_preset_array(dexed.Preset().to_array())
    target = r.render(voice)
    start = sample_around(voice, np.random.default_rng(2), 0.08, 0.0, 0.0)
    a = spsa_refine(target, start, r, budget_renders=12, learning_rate=3e-3, seed=4)
    b = spsa_refine(target, start, r, budget_renders=12, learning_rate=3e-3, seed=4)
    c = spsa_refine(target, start, r, budget_renders=12, learning_rate=3e-3, seed=5)
    assert a.renders == 11 and len(a.curve) == 11  # 1 + 2 per step, never over budget
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.curve, b.curve)
    assert not np.array_equal(a.curve, c.curve)
    assert a.loss <= a.start_loss and np.all(np.diff(a.curve) <= 0)
    fixed = ~numeric_free_mask()
    np.testing.assert_array_equal(a.x[fixed], quantize_normalized(start)[fixed])
