"""The Fx layer against ground truth: autodiff twins, one-shot rendering, isolation."""

import numpy as np
import pytest
import torch

from deepafx.chain import chain
from deepafx.fx import ExponentialEpsilon, FxLayer
from deepafx.hosts.base import AudioError, PluginError
from deepafx.hosts.testing import waveshaper_torch
from deepafx.params import ParameterError

from conftest import music_like

WS = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="waveshaper")
COMP = chain(
    {"backend": "pedalboard.Compressor", "name": "comp"},
    {"backend": "builtin.graphic_eq", "name": "eq"},
    {"backend": "pedalboard.Limiter", "name": "lim"},
    sample_rate=44100, name="mastering-like",
)


@pytest.fixture(scope="module")
def ws_layer():
    layer = FxLayer(WS, batch_size=4, num_workers=2, num_perturbations=1, seed=1)
    yield layer
    layer.close()


def _problem():
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(4, 2, 2048, generator=g)
    p = torch.rand(4, 4, generator=g) * 0.8 + 0.1
    w = torch.randn(4, 2, 2048, generator=g)
    pt = p.clone().requires_grad_(True)
    (waveshaper_torch(x, pt) * w).sum().backward()
    return x, p, w, pt.grad


def test_forward_matches_twin(ws_layer):
    x, p, _, _ = _problem()
    y = ws_layer(x, p)
    np.testing.assert_allclose(y.numpy(), waveshaper_torch(x, p).numpy(), atol=2e-6)


def test_spsa_converges_to_autodiff(ws_layer):
    x, p, w, g_true = _problem()
    draws = []
    for _ in range(150):
        pp = p.clone().requires_grad_(True)
        (ws_layer(x, pp) * w).sum().backward()
        draws.append(pp.grad)
    g = torch.stack(draws).mean(0)
    cos = torch.nn.functional.cosine_similarity(g.flatten(), g_true.flatten(), dim=0).item()
    assert cos >= 0.95
    # one draw is unbiased but noisy: clearly worse than the average
    cos1 = torch.nn.functional.cosine_similarity(draws[0].flatten(), g_true.flatten(), dim=0).item()
    assert cos1 < cos


def test_finite_differences_match_autodiff():
    x, p, w, g_true = _problem()
    with FxLayer(WS, batch_size=4, num_workers=2, estimator="fd", epsilon=1e-3) as fd:
        pp = p.clone().requires_grad_(True)
        (fd(x, pp) * w).sum().backward()
    rel = ((pp.grad - g_true).norm() / g_true.norm()).item()
    assert rel < 2e-3


def test_spsa_k8_beats_k1():
    x, p, w, g_true = _problem()
    cos = {}
    for k in (1, 8):
        with FxLayer(WS, batch_size=4, num_workers=2, num_perturbations=k, seed=3) as layer:
            vals = []
            for _ in range(12):
                pp = p.clone().requires_grad_(True)
                (layer(x, pp) * w).sum().backward()
                vals.append(torch.nn.functional.cosine_similarity(pp.grad.flatten(), g_true.flatten(), dim=0).item())
        cos[k] = float(np.mean(vals))
    assert cos[8] > cos[1] + 0.1


def test_clipped_perturbation_at_boundary(ws_layer):
    """At θ = 0 or 1 the clipped step is ε, not 2ε: the estimate must stay calibrated."""
    x, _, w, _ = _problem()
    p = torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 4)
    pt = p.clone().requires_grad_(True)
    (waveshaper_torch(x, pt) * w).sum().backward()
    draws = []
    for _ in range(150):
        pp = p.clone().requires_grad_(True)
        (ws_layer(x, pp) * w).sum().backward()
        draws.append(pp.grad)
    g = torch.stack(draws).mean(0)
    assert torch.nn.functional.cosine_similarity(g.flatten(), pt.grad.flatten(), dim=0).item() > 0.95


def test_worker_differences_equal_differences_of_the_renders():
    """The workers' y⁺ − y⁻ (the default path) gives bit for bit the gradient of subtracting returned renders."""
    x, p, w, _ = _problem()
    grads = []
    for keep in (False, True):  # keep_last_renders brings every render back and subtracts here
        with FxLayer(COMP, batch_size=4, num_workers=2, num_perturbations=2, seed=4) as layer:
            layer.keep_last_renders = keep
            pp = torch.rand(4, layer.num_params, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
            (layer(x, pp) * w).sum().backward()
            grads.append(pp.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_differences_survive_a_second_forward_and_stale_ones_raise():
    """The differences stay views of the engine's buffers until the next render: a forward run before the
    previous one's backward copies them out first (same gradient as without it); a second backward after a new
    render, whose buffers were overwritten, raises instead of reading them."""
    x, p, w, _ = _problem()
    grads = []
    for second_forward in (False, True):
        with FxLayer(COMP, batch_size=4, num_workers=2, seed=4) as layer:
            pa = torch.rand(4, layer.num_params, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
            ya = layer(x, pa)
            if second_forward:
                layer(2 * x, torch.full_like(pa, 0.3).requires_grad_(True))  # overwrites the engine's buffers
            (ya * w).sum().backward()
            grads.append(pa.grad)
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])
    with FxLayer(COMP, batch_size=4, num_workers=2, seed=4) as layer:
        pa = torch.rand(4, layer.num_params, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        y = layer(x, pa)
        (y * w).sum().backward(retain_graph=True)
        g1 = pa.grad.clone()
        (y * w).sum().backward(retain_graph=True)  # no render in between: the views are still valid
        torch.testing.assert_close(pa.grad, 2 * g1)
        layer(x, pa.detach())
        with pytest.raises(RuntimeError, match="released"):
            (y * w).sum().backward()


def test_chunked_equals_one_shot_and_slots_isolated(rng):
    a = music_like(rng, 2, 8 * 4096)
    b = music_like(np.random.default_rng(5), 2, 8 * 4096) * 3.0
    params = torch.rand(2, 0 + len(COMP.param_table), generator=torch.Generator().manual_seed(2))
    one_shot = COMP.build().process(a, params[0].double().numpy())
    with FxLayer(COMP, batch_size=2, num_workers=2) as layer:
        layer.eval()
        blocks = []
        for k in range(8):
            sl = slice(k * 4096, (k + 1) * 4096)
            x = torch.from_numpy(np.stack([a[:, sl], b[:, sl]]))
            blocks.append(layer(x, params)[0].numpy())
    np.testing.assert_allclose(np.concatenate(blocks, -1), one_shot, atol=1e-6)
    # slot 0 (fed a) is unaffected by slot 1 (fed b, 10 dB louder)
    with FxLayer(COMP, batch_size=1, num_workers=1) as alone:
        alone.eval()
        y = [alone(torch.from_numpy(a[None, :, k * 4096:(k + 1) * 4096]), params[:1])[0].numpy() for k in range(8)]
    np.testing.assert_array_equal(np.concatenate(y, -1), np.concatenate(blocks, -1))


def test_perturbation_instances_follow_main_history(rng):
    """Replaying each instance's recorded parameter sequence from a fresh chain reproduces its renders."""
    audio = music_like(rng, 2, 6 * 2048)
    with FxLayer(COMP, batch_size=1, num_workers=1, num_perturbations=2, seed=7) as layer:
        layer.keep_last_renders = True
        p0 = torch.full((1, layer.num_params), 0.5)
        history = []
        for k in range(6):
            x = torch.from_numpy(audio[None, :, k * 2048:(k + 1) * 2048])
            p = (p0 + 0.05 * k).clamp(0, 1).requires_grad_(True)
            layer(x, p).pow(2).sum().backward()
            history.append(layer.last_render_params[0].copy())
        last = layer.last_renders[0]
    assert last.shape[0] == 5  # main, 2 plus, 2 minus
    for r in range(5):
        inst = COMP.build()
        for k in range(6):
            out = inst.process(audio[:, k * 2048:(k + 1) * 2048], history[k][r])
        np.testing.assert_allclose(out, last[r], atol=1e-6)
    assert np.abs(last[1] - last[3]).max() > 1e-4  # the perturbations do change the output


def test_reset_restores_fresh_state(rng):
    audio = torch.from_numpy(music_like(rng, 2, 4096)[None])
    p = torch.full((1, len(COMP.param_table)), 0.3)
    with FxLayer(COMP, batch_size=1, num_workers=1) as layer:
        layer.eval()
        first = layer(audio, p)
        second = layer(audio, p)
        layer.reset()
        third = layer(audio, p)
    assert (first - second).abs().max() > 1e-4  # state carried over
    torch.testing.assert_close(first, third, atol=0, rtol=0)


def test_input_grad_modes_and_mix_and_match():
    x, p, w, _ = _problem()
    post_gain = torch.tensor(0.7, requires_grad=True)
    with FxLayer(WS, batch_size=4, num_workers=2) as none_layer:
        xa = x.clone().requires_grad_(True)
        y = none_layer(xa, p.clone().requires_grad_(True))
        (post_gain * y * w).sum().backward()
        assert xa.grad is None
        # exact autograd for the differentiable module after the black box
        torch.testing.assert_close(post_gain.grad, (y.detach() * w).sum(), rtol=1e-5, atol=1e-4)
    with FxLayer(WS, batch_size=4, num_workers=2, input_grad="straight_through") as st:
        pre = torch.tensor(2.0, requires_grad=True)
        xa = x.clone()
        (st(pre * xa, p) * w).sum().backward()
        torch.testing.assert_close(pre.grad, (w * xa).sum(), rtol=1e-5, atol=1e-3)


def test_dtype_and_epsilon_schedule():
    x, p, w, _ = _problem()
    sched = ExponentialEpsilon(0.01, 1e-3, steps=4)
    assert sched(0) == pytest.approx(0.01) and sched(4) == pytest.approx(1e-3) and sched(100) == pytest.approx(1e-3)
    with FxLayer(WS, batch_size=4, num_workers=1, epsilon=sched) as layer:
        y = layer(x.double(), p.double().requires_grad_(True))
        assert y.dtype == torch.float64
        state = layer.state_dict()
        for _ in range(3):
            layer(x, p.clone().requires_grad_(True)).sum().backward()
        assert layer.step == 4 and layer.current_epsilon() == pytest.approx(1e-3)
        layer.load_state_dict(state)
        assert layer.step == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_round_trip():
    x, p, w, _ = _problem()
    with FxLayer(WS, batch_size=4, num_workers=1) as layer:
        pp = p.cuda().requires_grad_(True)
        y = layer(x.cuda(), pp)
        (y * w.cuda()).sum().backward()
        assert y.device.type == "cuda" and pp.grad.device.type == "cuda"


def test_bad_inputs_raise_clearly(ws_layer):
    x, p, _, _ = _problem()
    with pytest.raises(AudioError, match="NaN"):
        ws_layer(x.clone().fill_(float("nan")), p)
    with pytest.raises(AudioError, match="batch, channels, samples"):
        ws_layer(x[0], p)
    with pytest.raises(AudioError, match="slots"):
        ws_layer(torch.zeros(5, 2, 64), torch.rand(5, 4))
    with pytest.raises(ParameterError, match="4 learned parameters"):
        ws_layer(x, p[:, :3])
    bad = p.clone()
    bad[1, 2] = 1.5
    with pytest.raises(ParameterError, match="ws.mix"):
        ws_layer(x, bad)


def test_unknown_parameter_and_missing_plugin():
    spec = chain({"backend": "testing.waveshaper", "name": "ws", "fixed": {"drive_dbb": 3.0}})
    with pytest.raises(ParameterError, match="unknown parameter 'drive_dbb'.*drive_db"):
        FxLayer(spec, batch_size=1, num_workers=1)
    with pytest.raises(PluginError, match="unknown backend"):
        FxLayer(chain({"backend": "nope", "name": "x"}), batch_size=1, num_workers=1)
    missing = chain({"backend": "vst3", "name": "v", "options": {"path": "/nonexistent/Plugin.vst3"}})
    with pytest.raises(PluginError, match="/nonexistent/Plugin.vst3"):
        FxLayer(missing, batch_size=1, num_workers=1)
