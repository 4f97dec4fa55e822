"""Tests for the log-mel front end and the encoders."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from deepafx.encoders import (
    ENCODERS,
    DiffSynthEstimator,
    EstimatorOutput,
    InceptionEncoder,
    MobileNetV2Encoder,
    ParamLayout,
    build_encoder,
    count_parameters,
    outputs_to_normalized,
)
from deepafx.features import LogMel
from deepafx.params import Param, ParamTable


def _noise(*shape: int, seed: int = 0, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# --------------------------------------------------------------------------- LogMel


@pytest.mark.parametrize("sample_rate,n_fft,hop,n_mels", [(22050, 1024, 256, 128), (16000, 512, 128, 64), (44100, 2048, 512, 96)])
def test_logmel_matches_librosa(sample_rate, n_fft, hop, n_mels):
    x = _noise(2, 2, 9000).numpy()
    feat = LogMel(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, normalize="none", mel_norm="slaney")
    ours = feat(torch.from_numpy(x)).numpy()
    ref = librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    ref_db = 10 * np.log10(np.maximum(ref * feat.power_scale, 1e-12))
    assert ours.shape == ref.shape == (2, 2, n_mels, 1 + 9000 // hop)
    np.testing.assert_allclose(ours, ref_db, atol=2e-3)


def test_logmel_shape_downmix_and_frames():
    feat = LogMel(22050)
    assert feat(_noise(2, 3, 40960)).shape == (2, 3, 128, 161)
    assert feat.num_frames(40960) == 161
    mono = LogMel(22050, downmix=True)
    x = _noise(2, 3, 4096)
    np.testing.assert_allclose(mono(x).numpy(), feat(x.mean(1, keepdim=True)).numpy(), atol=1e-6)
    assert mono(x).shape == (2, 1, 128, 17)


def test_logmel_normalizations():
    x = _noise(3, 2, 8192)
    db = LogMel(22050, normalize="none")(x)
    rng = LogMel(22050, normalize="range")(x)
    np.testing.assert_allclose(rng.numpy(), ((db + 120.0) / 120.0).numpy(), atol=1e-6)
    std = LogMel(22050, normalize="standardize")(x)
    np.testing.assert_allclose(std.mean(dim=(1, 2, 3)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(std.std(dim=(1, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-4)
    # Digital silence sits exactly on the floor.
    assert float(LogMel(22050, normalize="none")(torch.zeros(1, 1, 2048)).max()) == -120.0
    assert float(LogMel(22050, floor_db=-80, normalize="range")(torch.zeros(1, 1, 2048)).abs().max()) == 0.0


def test_logmel_full_scale_sine_reads_near_0_db():
    sr = 22050
    f_hz = 46 * sr / 1024  # on an FFT bin centre
    t = torch.arange(sr) / sr
    x = torch.sin(2 * torch.pi * f_hz * t)[None, None]
    db = LogMel(sr, normalize="none")(x)[0, 0, :, 20:-20]
    peak = float(db.max(dim=0).values.mean())
    assert -1.5 < peak < 1.5


def test_logmel_dtypes():
    x = _noise(2, 1, 4096)
    feat = LogMel(22050)
    y32 = feat(x)
    y64 = feat(x.double())
    assert y64.dtype == torch.float64
    np.testing.assert_allclose(y64.numpy(), y32.numpy(), atol=1e-4)
    ybf = feat(x.to(torch.bfloat16))
    assert ybf.dtype == torch.bfloat16
    np.testing.assert_allclose(ybf.float().numpy(), y32.numpy(), atol=0.02)


def test_logmel_errors():
    feat = LogMel(22050)
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        feat(torch.zeros(4096))
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        feat(torch.zeros(1, 1, 1, 4096))
    with pytest.raises(ValueError, match="floating-point"):
        feat(torch.zeros(1, 1, 4096, dtype=torch.int16))
    with pytest.raises(ValueError, match="f_max_hz"):
        LogMel(16000, f_max_hz=9000)
    with pytest.raises(ValueError, match="normalize"):
        LogMel(16000, normalize="minmax")
    with pytest.raises(ValueError, match="floor_db"):
        LogMel(16000, floor_db=10)
    with pytest.raises(ValueError, match="sample_rate"):
        LogMel(0)


def test_logmel_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    x = _noise(2, 2, 8192)
    feat = LogMel(22050)
    cpu = feat(x)
    gpu = feat.to("cuda")(x.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-4)


# --------------------------------------------------------------------------- context encoders

SMALL = {
    "inception": dict(stem_channels=8, widths=(16, 24), hidden=32),
    "mobilenetv2": dict(stages=((1, 8, 1, 1), (4, 16, 2, 2), (4, 24, 1, 2)), last_channels=32, hidden=32),
}


@pytest.mark.parametrize("cls,low,high", [(InceptionEncoder, 300_000, 1_500_000), (MobileNetV2Encoder, 300_000, 1_500_000)])
def test_default_parameter_counts(cls, low, high):
    n = count_parameters(cls(10))
    assert low <= n <= high
    # The output layer grows by (hidden + 1) weights per extra parameter.
    assert count_parameters(cls(11)) - n == 257


@pytest.mark.parametrize("name", ["inception", "mobilenetv2"])
def test_context_encoder_default_forward_shape(name):
    torch.manual_seed(0)
    enc = build_encoder(name, num_params=7)
    enc.eval()
    with torch.no_grad():
        y = enc(_noise(2, 1, 40960))
    assert y.shape == (2, 7)
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0


@pytest.mark.parametrize("name", ["inception", "mobilenetv2"])
def test_gradient_reaches_input_and_every_weight(name):
    torch.manual_seed(0)
    enc = build_encoder(name, num_params=5, **SMALL[name])
    x = _noise(3, 1, 8192).requires_grad_(True)
    target = torch.full((3, 5), 0.3)
    y = enc(x)
    assert y.shape == (3, 5)
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    torch.nn.functional.mse_loss(y, target).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0.0
    for pname, p in enc.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().sum()) > 0.0, pname


@pytest.mark.parametrize("name", ["inception", "mobilenetv2"])
def test_output_bias_init_reproduces_defaults(name):
    torch.manual_seed(0)
    defaults = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    enc = build_encoder(name, num_params=5, default_params=defaults, **SMALL[name]).eval()
    with torch.no_grad():
        y = enc(_noise(4, 1, 8192)).numpy()
    expected = np.clip(defaults, 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(y, np.broadcast_to(expected, y.shape), atol=5e-3)
    enc.init_output_bias(torch.tensor(defaults), weight_scale=0.0)
    with torch.no_grad():
        y = enc(_noise(4, 1, 8192, seed=3)).numpy()
    np.testing.assert_allclose(y, np.broadcast_to(expected, y.shape), atol=1e-6)
    with pytest.raises(ValueError, match="5 values"):
        enc.init_output_bias([0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        enc.init_output_bias([0.5, 0.5, 1.5, 0.5, 0.5])


def test_channels_and_downmix():
    enc = InceptionEncoder(3, in_channels=2, **SMALL["inception"]).eval()
    with torch.no_grad():
        assert enc(_noise(2, 2, 4096)).shape == (2, 3)
    with pytest.raises(ValueError, match="in_channels=1"):
        enc(_noise(2, 1, 4096))
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        enc(_noise(2, 4096))
    mono = InceptionEncoder(3, downmix=True, **SMALL["inception"]).eval()
    with torch.no_grad():
        assert mono(_noise(2, 2, 4096)).shape == (2, 3)
        assert mono(_noise(2, 5, 4096)).shape == (2, 3)


def test_eval_outputs_independent_of_batch():
    torch.manual_seed(0)
    enc = MobileNetV2Encoder(4, **SMALL["mobilenetv2"]).eval()
    x = _noise(3, 1, 8192)
    with torch.no_grad():
        full = enc(x)
        one = enc(x[1:2])
    np.testing.assert_allclose(one.numpy(), full[1:2].numpy(), atol=1e-5)


def test_registry():
    assert set(ENCODERS) == {"inception", "mobilenetv2", "diffsynth"}
    enc = build_encoder("Inception", num_params=3, **SMALL["inception"])
    assert isinstance(enc, InceptionEncoder) and enc.num_params == 3
    with pytest.raises(ValueError, match="unknown encoder .*known: inception, mobilenetv2, diffsynth"):
        build_encoder("resnet", num_params=3)
    with pytest.raises(ValueError, match="bad arguments for encoder 'inception'"):
        build_encoder("inception", num_params=3, nonsense=1)
    with pytest.raises(ValueError, match="num_params"):
        build_encoder("mobilenetv2", num_params=0)


# --------------------------------------------------------------------------- DiffSynth estimator


def test_diffsynth_shapes_and_gradients():
    torch.manual_seed(0)
    est = DiffSynthEstimator(
        num_numeric=6, discrete_counts=(4, 1, 32), num_frame_params=2, in_channels=3,
        conv_channels=(8, 16), frame_dim=32, gru_hidden=32,
    )
    x = _noise(2, 3, 16000).requires_grad_(True)
    out = est(x)
    frames = 1 + 16000 // 256
    assert out.numeric.shape == (2, 6)
    assert [t.shape for t in out.discrete_logits] == [(2, 4), (2, 1), (2, 32)]
    assert out.frame_numeric.shape == (2, frames, 2)
    assert float(out.numeric.detach().min()) >= 0 and float(out.numeric.detach().max()) <= 1
    cat, offsets = out.concat_logits()
    assert cat.shape == (2, 37) and offsets == [0, 4, 5]
    # A one-value head gets no gradient from cross-entropy (its softmax is constant): use a squared penalty.
    loss = out.numeric.sum() + out.frame_numeric.sum() + sum(l.square().mean() for l in out.discrete_logits)
    loss.backward()
    assert float(x.grad.abs().sum()) > 0
    for pname, p in est.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, pname
    with pytest.raises(ValueError, match="in_channels=1"):
        est(_noise(2, 1, 16000))


def test_diffsynth_default_size():
    est = DiffSynthEstimator(100, discrete_counts=[4, 8, 32, 16] * 10, in_channels=6)
    assert 300_000 <= count_parameters(est) <= 1_500_000
    est.eval()
    with torch.no_grad():
        out = est(_noise(1, 6, 16000))
    assert out.numeric.shape == (1, 100) and len(out.discrete_logits) == 40 and out.frame_numeric is None


def _table() -> ParamTable:
    return ParamTable(
        (
            Param("cutoff_hz", 20.0, 20000.0, 1000.0, "Hz", "log"),
            Param("algorithm", 0, 31, 0, values=tuple(range(32))),
            Param("gain_db", -12.0, 12.0, 0.0, "dB"),
            Param("waveform", 0, 3, 0, values=(0, 1, 2, 3)),
            Param("coarse", 0, 99, 1, values=tuple(range(100))),
        )
    )


def test_param_layout_from_table_and_validation():
    layout = ParamLayout.from_table(_table(), max_categories=32)
    assert layout.numeric_indices == (0, 2, 4)  # 100 values > 32: numeric
    assert layout.discrete_indices == (1, 3) and layout.discrete_counts == (32, 4)
    assert (layout.num_numeric, layout.num_discrete) == (3, 2)
    with pytest.raises(ValueError, match="exactly once"):
        ParamLayout(3, (0, 1), (1,), (4,))
    with pytest.raises(ValueError, match="same length"):
        ParamLayout(3, (0, 1), (2,), ())
    with pytest.raises(ValueError, match=">= 1"):
        ParamLayout(2, (0,), (1,), (0,))


def test_outputs_to_normalized_hard_and_soft_match_param_table():
    table = _table()
    layout = ParamLayout.from_table(table)
    numeric = torch.tensor([[0.1, 0.5, 0.9], [0.0, 1.0, 0.25]])
    algo = torch.full((2, 32), -10.0)
    algo[0, 7] = 10.0
    algo[1, 31] = 10.0
    wave = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    out = EstimatorOutput(numeric=numeric, discrete_logits=[algo, wave])

    hard = outputs_to_normalized(out, layout, "hard")
    assert hard.shape == (2, 5)
    np.testing.assert_allclose(hard[:, [0, 2, 4]].numpy(), numeric.numpy())
    np.testing.assert_allclose(hard[:, 1].numpy(), [7 / 31, 1.0], atol=1e-7)
    np.testing.assert_allclose(hard[:, 3].numpy(), [0.0, 1 / 3], atol=1e-7)
    values = table.denormalize(hard.numpy())
    np.testing.assert_allclose(values[:, 1], [7, 31])
    np.testing.assert_allclose(values[:, 3], [0, 1])

    soft = outputs_to_normalized(out, layout, "soft")
    p = torch.softmax(wave, dim=1).numpy()
    grid = np.arange(4) / 3
    np.testing.assert_allclose(soft[:, 3].numpy(), p @ grid, atol=1e-6)
    np.testing.assert_allclose(soft[0, 3].item(), 0.5, atol=1e-6)  # uniform → mean of the grid
    np.testing.assert_allclose(soft[:, 1].numpy(), [7 / 31, 1.0], atol=1e-4)

    logits = wave.clone().requires_grad_(True)
    outputs_to_normalized(EstimatorOutput(numeric, [algo, logits]), layout, "soft")[:, 3].sum().backward()
    assert float(logits.grad.abs().sum()) > 0

    with pytest.raises(ValueError, match="mode"):
        outputs_to_normalized(out, layout, "argmax")
    with pytest.raises(ValueError, match="layout expects"):
        outputs_to_normalized(EstimatorOutput(numeric, [algo]), layout)


def test_split_targets_roundtrip():
    table = _table()
    layout = ParamLayout.from_table(table)
    x = torch.tensor(table.normalize([[1000.0, 5, 3.0, 2, 40], [20.0, 31, -12.0, 0, 99]]), dtype=torch.float32)
    numeric, classes = layout.split_targets(x)
    assert numeric.shape == (2, 3)
    assert classes[0].tolist() == [5, 31] and classes[1].tolist() == [2, 0]
    logits = [torch.nn.functional.one_hot(c, n).float() * 20 for c, n in zip(classes, layout.discrete_counts)]
    back = outputs_to_normalized(EstimatorOutput(numeric, logits), layout, "hard")
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-6)
    est = DiffSynthEstimator.from_layout(layout, conv_channels=(8,), frame_dim=16, gru_hidden=16)
    assert est.num_numeric == 3 and est.discrete_counts == (32, 4)
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        layout.split_targets(x[:, :3])


@pytest.mark.parametrize("name", ["inception", "mobilenetv2"])
def test_state_dict_roundtrip(name):
    torch.manual_seed(0)
    a = build_encoder(name, num_params=4, **SMALL[name]).eval()
    torch.manual_seed(1)
    b = build_encoder(name, num_params=4, **SMALL[name]).eval()
    # Filterbank and window are rebuilt from the arguments, not stored.
    assert not any(k.startswith("features.") for k in a.state_dict())
    b.load_state_dict(a.state_dict())
    x = _noise(2, 1, 8192)
    with torch.no_grad():
        np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ["inception", "mobilenetv2"])
def test_level_features_give_the_head_the_absolute_level(name):
    """With level_features the head sees 3 more inputs that move 10x the range-normalized log-mel level."""
    from deepafx.encoders import LEVEL_FEATURE_SCALE, NUM_LEVEL_FEATURES

    torch.manual_seed(0)
    plain = build_encoder(name, num_params=4, **SMALL[name])
    torch.manual_seed(0)
    enc = build_encoder(name, num_params=4, level_features=True, **SMALL[name])
    assert enc.head[0].in_features == plain.head[0].in_features + NUM_LEVEL_FEATURES
    seen = []
    enc.head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0][:, -NUM_LEVEL_FEATURES:].clone()))
    enc.eval()
    x = _noise(1, 1, 8192)
    with torch.no_grad():
        enc(x)
        enc(x * 0.1)  # 20 dB quieter
    step = (seen[0] - seen[1]) / LEVEL_FEATURE_SCALE * 120.0  # back to dB on the -120 dB floor's range
    assert torch.allclose(step, torch.full_like(step, 20.0), atol=0.05)
