"""The level-relative gain of the automation model (``model.level_relative``).

The gain a level-relative model renders is its wanted output level minus the context's measured
level, so scaling the input by g dB moves the rendered gain by −g dB (inside the range), the output
level is what the encoder asks for, and nothing changes for the other parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepafx.automation.model import (AutomationModel, ModelConfig, context_level_db, model_from_checkpoint)
from deepafx.chain import ChainSpec
from deepafx import metrics
from deepafx.config import load_config

TINY = {"encoder": "mobilenetv2", "context_seconds": 1.0, "frame_seconds": 0.25, "n_mels": 32,
        "encoder_kwargs": {"width_mult": 0.25, "stages": [[1, 8, 1, 2], [2, 16, 1, 2]], "last_channels": 32,
                           "hidden": 16}}
RELATIVE = {"param": "gain.gain_db", "output_range_db": [-40, 0], "default_db": -20}


def _model(**overrides):
    cfg = load_config("recipes/mastering/quick.yaml")
    spec = ChainSpec.from_dict(cfg["chain"])
    table = spec.param_table
    torch.manual_seed(0)
    mc = ModelConfig(**{**TINY, "level_relative": dict(RELATIVE), **overrides})
    return AutomationModel(mc, spec, len(table), table.defaults_normalized()).eval(), table


def _noise(level_db: float, seconds: float = 1.0, sr: int = 44100) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 2, int(seconds * sr)))).float()
    return x * 10 ** (level_db / 20)  # unit-variance noise at level_db dBFS mean square


def _lufs(x: torch.Tensor) -> float:
    return metrics.lufs(x[0].numpy(), 44100)


def test_context_level_is_integrated_loudness_and_ignores_padding():
    rng = np.random.default_rng(3)
    # pink-ish noise with a loud and a quiet half: K-weighting and both gates matter
    x = torch.from_numpy(rng.standard_normal((1, 2, 3 * 44100)).cumsum(-1) * 1e-3).float()
    x = x - x.mean(-1, keepdim=True)
    x[..., : 44100] *= 0.05
    assert context_level_db(x, 44100).item() == pytest.approx(_lufs(x), abs=0.01)  # pyloudnorm's value
    # a track's start: zeros pad the context; the absolute gate leaves them out
    padded = torch.cat([torch.zeros(1, 2, 44100), x], dim=-1)
    assert context_level_db(padded, 44100).item() == pytest.approx(_lufs(x), abs=0.05)
    assert context_level_db(torch.zeros_like(x), 44100).item() == pytest.approx(-70.0)
    short = _noise(-20.0, seconds=0.1)  # shorter than a 400 ms block: one zero-padded block
    assert np.isfinite(context_level_db(short, 44100).item())


def test_gain_follows_the_input_level_and_reaches_the_default_output_level():
    model, table = _model()
    j = table.index("gain.gain_db")
    p = table[j]
    with torch.no_grad():
        gains = {}
        for level in (-30.0, -24.0):
            x = _noise(level)
            out = model(x)
            gains[level] = p.min + out[0, j].item() * (p.max - p.min)
            # untrained: the encoder sits at its initial bias, the default output loudness (−20 LUFS)
            assert _lufs(x) + gains[level] == pytest.approx(-20.0, abs=0.6)
    assert gains[-30.0] - gains[-24.0] == pytest.approx(6.0, abs=0.2)


def test_other_parameters_are_the_encoders_and_pretraining_goal_matches_the_default_level():
    model, table = _model()
    plain, _ = _model(level_relative=None)
    plain.load_state_dict(model.state_dict())
    x = _noise(-26.0)
    j = table.index("gain.gain_db")
    with torch.no_grad():
        a, b = model(x), plain(x)
        goal = model.pretrain_goal(x, torch.tensor(table.defaults_normalized(), dtype=torch.float32))
    keep = [i for i in range(len(table)) if i != j]
    assert torch.equal(a[:, keep], b[:, keep])
    assert goal[0, j].item() == pytest.approx(a[0, j].item(), abs=0.02)
    assert torch.allclose(goal[0, keep], torch.tensor(table.defaults_normalized(), dtype=torch.float32)[keep])


def test_gain_is_clipped_to_its_range():
    model, table = _model()
    j = table.index("gain.gain_db")
    with torch.no_grad():
        assert model(_noise(-65.0))[0, j].item() == 1.0  # needs about +45 dB, the range stops at +24
        assert model(_noise(-3.0))[0, j].item() == 0.0  # needs about −17 dB, the range stops at −12
        x = _noise(-22.0)
        assert model(x)[0, j].item() == pytest.approx((-20 - _lufs(x) + 12) / 36, abs=0.02)


@pytest.mark.parametrize("bad, match", [
    ({"param": "nope.gain_db"}, "unknown parameter"),
    ({"param": "gain.gain_db", "output_range_db": [0, -40]}, "lo < hi"),
    ({"param": "gain.gain_db", "default_db": 5}, "outside output_range_db"),
    ({"param": "gain.gain_db", "bogus": 1}, "unknown key"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(Exception, match=match):
        _model(level_relative=bad)


def test_checkpoint_round_trip_keeps_the_relative_gain(tmp_path):
    model, table = _model()
    cfg = load_config("recipes/mastering/quick.yaml")
    cfg.pop("_path")
    cfg["model"] = {**TINY, "level_relative": dict(RELATIVE)}
    ckpt = {"config": cfg, "chain": model.chain.to_dict(), "num_params": len(table), "model": model.state_dict()}
    again = model_from_checkpoint(ckpt)
    x = _noise(-28.0)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_sliding_context_levels_equal_each_window_measured_alone():
    """A whole track's levels, K-weighted once, equal :func:`context_level_db` window by window."""
    from deepafx.automation.model import sliding_context_levels

    rng = np.random.default_rng(5)
    sr, hop, ctx = 44100, 22050, 2 * 44100
    # low-frequency-heavy noise (the 38 Hz high-pass's state matters), a quiet stretch and silence
    x = rng.standard_normal((2, 7 * sr)).cumsum(-1) * 1e-3
    x -= x.mean(-1, keepdims=True)
    x[:, 2 * sr : 3 * sr] *= 0.02
    x[:, 5 * sr :] = 0.0
    frames = (x.shape[1] - ctx) // hop + 1
    got = sliding_context_levels(x, sr, hop, ctx, frames)
    windows = torch.from_numpy(np.stack([x[:, i * hop : i * hop + ctx] for i in range(frames)]))
    want = context_level_db(windows, sr).double().numpy()
    assert got.shape == (frames,)
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 output of context_level_db
    assert want.max() - want.min() > 30  # the test covers loud, quiet and silent windows
    with pytest.raises(ValueError, match="multiples"):
        sliding_context_levels(x, sr, hop + 1, ctx, frames)
    with pytest.raises(ValueError, match="samples"):
        sliding_context_levels(x[:, : ctx], sr, hop, ctx, frames)


@pytest.mark.parametrize("frame_seconds, shared", [(0.5, True), (0.25, False)])
def test_predict_automation_uses_the_levels_of_its_windows(frame_seconds, shared, monkeypatch):
    """Whole-track levels computed at once (hop a multiple of 100 ms) or per batch give the window's own."""
    from deepafx.automation import model as model_module
    from deepafx.automation.model import predict_automation

    calls = []
    real = model_module.sliding_context_levels
    monkeypatch.setattr(model_module, "sliding_context_levels", lambda *a: calls.append(1) or real(*a))
    model, table = _model(frame_seconds=frame_seconds)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 5 * 44100)) * 0.05).astype(np.float32)
    x[:, 44100:] *= 0.1
    times, params = predict_automation(model, x, batch_size=4, smoothing_frames=1)
    hop, ctx = model.frame_samples, model.context_samples
    padded = np.zeros((2, len(times) * hop + ctx), dtype=np.float32)
    padded[:, (ctx - hop) // 2 : (ctx - hop) // 2 + x.shape[1]] = x
    with torch.no_grad():
        want = model(torch.from_numpy(np.stack([padded[:, i * hop : i * hop + ctx] for i in range(len(times))])))
    np.testing.assert_allclose(params, want.numpy(), atol=1e-5)
    assert bool(calls) == shared
