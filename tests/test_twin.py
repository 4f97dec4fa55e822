"""The differentiable twin of the embedded mastering chain against the real pedalboard black box."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.autograd import gradcheck

from deepafx.assets import resolve_config
from deepafx.automation.twin import ChainTwin, brickwall_limiter, iir_filter, juce_compressor
from deepafx.chain import ChainSpec, chain
from deepafx.losses import build_loss
from deepafx.recipes.mastering import music
from deepafx.automation.task import load_tracks
from deepafx.recipes.mastering.train import DEFAULT_CHAIN

SR = 44100
BLOCK = SR // 4


def _quick_chain() -> ChainSpec:
    return ChainSpec.from_dict(yaml.safe_load(resolve_config("mastering/quick").read_text())["chain"])


@pytest.fixture(scope="module")
def real_music(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """One rendered piece of the mastering dataset: ``(input, target)``, each ``(2, samples)`` float32."""
    if not Path(music.DEFAULT_SOUNDFONT).is_file():
        pytest.skip(f"SoundFont {music.DEFAULT_SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    out = tmp_path_factory.mktemp("twin_music")
    music.build_dataset({"num_pieces": 1, "sources": ["bach_chorales"], "max_piece_seconds": 4.0,
                         "min_piece_seconds": 3.0, "seed": 1, "valid_fraction": 0.0, "test_fraction": 0.0}, out)
    (pair,) = load_tracks(out / "train")
    assert pair[0].shape[0] == 2 and pair[0].shape[1] >= 3 * SR
    return pair


def _stage_errors(spec: ChainSpec, audio: np.ndarray, thetas: np.ndarray,
                  plugin_precision: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Streams ``audio`` block by block (new parameters per block, state carried) through the black box
    and the twin; each twin stage gets the black box's output of the previous stage.

    Returns ``(max abs error per stage, max |black box| per stage, max abs error of the whole twin chain)``.
    """
    live = spec.build()
    twin, whole = ChainTwin(spec, 1, plugin_precision), ChainTwin(spec, 1, plugin_precision)
    errors = np.zeros(len(spec.processors))
    peaks = np.zeros(len(spec.processors))
    chain_error = 0.0
    try:
        for i, theta in enumerate(thetas):
            block = audio[:, i * BLOCK : (i + 1) * BLOCK]
            values = live.plugin_values(theta)
            params = torch.from_numpy(theta)[None]
            x = block
            for k, proc in enumerate(live.processors):
                ref = proc.process(x, values[k])
                out = twin.process_stage(k, torch.from_numpy(x)[None], params)[0].double().numpy()
                errors[k] = max(errors[k], np.abs(out - ref).max())
                peaks[k] = max(peaks[k], np.abs(ref).max())
                x = ref
            y = whole(torch.from_numpy(block)[None], params)[0].double().numpy()
            chain_error = max(chain_error, float(np.abs(y - x).max()))
    finally:
        live.close()
    return errors, peaks, chain_error


def test_twin_matches_black_box_at_defaults(real_music):
    spec = _quick_chain()
    defaults = spec.param_table.defaults_normalized()
    errors, peaks, chain_error = _stage_errors(spec, real_music[0], np.tile(defaults, (6, 1)))
    # the twin repeats the plugins' float32 arithmetic: what is left is float32 rounding
    assert errors.max() < 1e-6, errors
    assert chain_error < 1e-5


@pytest.mark.parametrize("plugin_precision, stage_bound, chain_bound", [(True, 1e-6, 1e-5), (False, 1e-3, 2e-3)])
def test_twin_matches_black_box_at_random_settings(real_music, plugin_precision, stage_bound, chain_bound):
    """Relative max error per stage and of the whole twin chain.

    With the plugins' float32 arithmetic the twin agrees to the last bits. In
    float64 (``plugin_precision=False``) the residual is the plugins' own float32
    rounding, largest in the EQ's low-frequency biquads (poles near 1; about
    1e-4 of full scale at 31 Hz).
    """
    spec = _quick_chain()
    rng = np.random.default_rng(0)
    worst = np.zeros(4)
    for _ in range(3):
        thetas = rng.uniform(0, 1, (6, spec.num_params))
        errors, peaks, chain_error = _stage_errors(spec, real_music[0], thetas, plugin_precision)
        worst = np.maximum(worst, errors / peaks)
        assert chain_error / peaks[-1] < chain_bound
    assert worst.max() < stage_bound, worst  # mbc, geq, gain, limiter


def test_full_default_chain_matches_with_every_parameter_learned(real_music):
    """The recipe's DEFAULT_CHAIN learns all 30 parameters (crossovers, ratios, time constants, release)."""
    spec = ChainSpec.from_dict(DEFAULT_CHAIN)
    assert spec.num_params == 30
    rng = np.random.default_rng(1)
    errors, peaks, chain_error = _stage_errors(spec, real_music[0], rng.uniform(0, 1, (6, 30)))
    assert (errors / peaks).max() < 1e-6, errors / peaks
    assert chain_error / peaks[-1] < 1e-5


def test_state_carries_across_calls_and_reset_restores_a_fresh_instance(real_music):
    spec = _quick_chain()
    twin = ChainTwin(spec, 2)
    x = torch.from_numpy(real_music[0][:, : 4 * BLOCK])[None].repeat(2, 1, 1).double() * 4
    theta = torch.rand(2, spec.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = twin(x, theta)
    twin.reset()
    blocks = torch.cat([twin(x[..., i * BLOCK : (i + 1) * BLOCK], theta) for i in range(4)], -1)
    assert torch.allclose(one, blocks, rtol=0, atol=1e-12)
    twin.reset([1])
    again = twin(x[1:2, :, :BLOCK].repeat(2, 1, 1), theta)  # slot 0 continues, slot 1 is fresh
    assert torch.allclose(again[1], one[1, :, :BLOCK], rtol=0, atol=1e-12)
    assert not torch.allclose(again[0], one[0, :, :BLOCK], atol=1e-6)
    live = spec.build()
    assert twin.latency_samples == 220 == live.latency_samples
    live.close()


def test_adjoints_equal_numerical_derivatives():
    """The hand-written backward passes against numerical derivatives (float64 forward)."""
    g = torch.Generator().manual_seed(0)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 2, 48, generator=g, **f64).requires_grad_()
    b = torch.tensor([[0.3, 0.2, 0.1], [0.5, -0.1, 0.05]], **f64).requires_grad_()
    a = torch.tensor([[-0.5, 0.2], [0.3, -0.1]], **f64).requires_grad_()
    zi = torch.randn(2, 2, 2, generator=g, **f64)
    ones = torch.ones(2, 1, **f64)
    assert gradcheck(lambda x, b, a: iir_filter(x, b, torch.cat([ones, a], 1), zi, False)[0], (x, b, a))
    b1, a1 = b[:, :2].detach().requires_grad_(), a[:, :1].detach().requires_grad_()  # first order
    assert gradcheck(lambda x, b, a: iir_filter(x, b, torch.cat([ones, a], 1), zi[..., :1], False)[0], (x, b1, a1))
    threshold = torch.tensor([0.3, 0.5], **f64).requires_grad_()
    exponent = torch.tensor([-0.6, -0.3], **f64).requires_grad_()
    c_att = torch.tensor([0.7, 0.5], **f64).requires_grad_()
    c_rel = torch.tensor([0.95, 0.9], **f64).requires_grad_()
    env0 = torch.rand(2, 2, generator=g, **f64)
    assert gradcheck(lambda *args: juce_compressor(*args, env0, False)[0], (x, threshold, exponent, c_att, c_rel))
    ceiling = torch.tensor([0.8, 0.6], **f64).requires_grad_()
    release = torch.tensor([0.9, 0.8], **f64).requires_grad_()
    line0 = torch.randn(2, 2, 3, generator=g, **f64)
    g0, hold0 = torch.tensor([0.9, 1.0], **f64), torch.tensor([0, 2])
    assert gradcheck(lambda x, c, r: brickwall_limiter(x, c, r, line0, g0, hold0, False)[0], (x, ceiling, release))


def _fd_cosines(spec: ChainSpec, pair, loss, trials: int, seed: int, epsilon: float = 0.01) -> list[float]:
    """Cosine between the twin's gradient and two-sided finite differences through the black box."""
    live, twin = spec.build(), ChainTwin(spec, 1)
    rng = np.random.default_rng(seed)
    n = 2 * BLOCK
    out = []
    try:
        for t in range(trials):
            start = int(rng.integers(0, pair[0].shape[1] - n))
            x = pair[0][:, start : start + n]
            target = torch.from_numpy(pair[1][:, start : start + n])[None]
            theta = rng.uniform(0.1, 0.9, spec.num_params)

            def black_box(th):
                live.reset()
                return float(loss(torch.from_numpy(live.process(x, np.clip(th, 0, 1)))[None], target))

            fd = np.array([(black_box(theta + epsilon * e) - black_box(theta - epsilon * e)) / (2 * epsilon)
                           for e in np.eye(spec.num_params)])
            twin.reset()
            p = torch.tensor(theta[None], requires_grad=True)
            loss(twin(torch.from_numpy(x)[None], p), target).sum().backward()
            g = p.grad[0].numpy()
            out.append(float(g @ fd / (np.linalg.norm(g) * np.linalg.norm(fd))))
    finally:
        live.close()
    return out


def test_gradient_direction_agrees_with_black_box_finite_differences(real_music):
    """Delay-invariant loss (the training loss) through the whole quick chain.

    The black box is not smooth at ε = 0.01 everywhere: a peak that crosses the
    limiter's ceiling during a release restarts its hold (a jump in the output
    that the exact gradient does not see) and the loss's lag search jumps, so
    single settings can disagree; the median over settings is the contract.
    """
    spec = _quick_chain()
    loss = build_loss("delay_invariant", sample_rate=SR, latency_samples=220, reduction="none")
    cos = _fd_cosines(spec, real_music, loss, trials=5, seed=3)
    assert np.median(cos) > 0.9, cos


def test_gradient_direction_without_the_limiter_is_exact(real_music):
    """Without the limiter the chain is smooth: every setting agrees with finite differences."""
    quick = _quick_chain()
    spec = chain(*quick.processors[:3], sample_rate=SR, name="mbc_geq_gain")
    lag = 0

    def mse(y, t):
        return ((y[..., lag:] - t[..., lag:]) ** 2).mean((1, 2)) * 1e3

    cos = _fd_cosines(spec, real_music, mse, trials=3, seed=4)
    assert min(cos) > 0.99, cos
