"""Real LV2 plugins through the ``lv2`` backend (liblilv via ctypes).

Plugins come from Debian packages (``lsp-plugins-lv2``, ``x42-plugins``,
``guitarix-lv2``); a test skips, with the reason, only when liblilv or its plugin
is absent. Outputs are compared only after checking that two fresh instances give
identical output.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from deepafx.chain import chain
from deepafx.hosts.base import AudioError, PluginError, ProcessorSpec, build_processor
from deepafx.params import ParameterError

from conftest import music_like

SR = 44100
LSP_COMP = "http://lsp-plug.in/plugins/lv2/compressor_stereo"
LSP_LIMITER = "http://lsp-plug.in/plugins/lv2/limiter_stereo"
X42_EQ = "http://gareus.org/oss/lv2/fil4#stereo"
GX_AMP = "http://guitarix.sourceforge.net/plugins/gx_amp#GUITARIX"
GX_JCM800 = "http://guitarix.sourceforge.net/plugins/gx_jcm800pre_#_jcm800pre_"
PACKAGES = {LSP_COMP: "lsp-plugins-lv2", LSP_LIMITER: "lsp-plugins-lv2", X42_EQ: "x42-plugins",
            GX_AMP: "guitarix-lv2", GX_JCM800: "guitarix-lv2"}
UNEVEN_BLOCKS = (100, 1000, 3000, 1024, 5000, 7, 4096, 4097)


def require(uri: str) -> str:
    try:
        from deepafx.hosts.lv2 import lv2_world

        world = lv2_world()
    except PluginError as exc:
        pytest.skip(f"liblilv is not installed: {exc}")
    if uri not in {u for u, _ in world.list_plugins()}:
        pytest.skip(f"LV2 plugin {uri} is not installed (Debian: apt-get install {PACKAGES.get(uri, '')})")
    return uri


def build(uri: str, **options):
    return build_processor(ProcessorSpec(backend="lv2", name="p", options={"uri": require(uri), **options}), SR)


def signal(channels: int = 2, seconds: float = 0.5, seed: int = 0, level: float = 0.5) -> np.ndarray:
    """Noise whose level swings over 24 dB at 4 Hz, so dynamics processors act and release."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 10 ** (-12 / 20 * (1 + np.sin(2 * np.pi * 4 * np.arange(n) / SR)))
    return (level * env * rng.standard_normal((channels, n))).astype(np.float32)


def blocks(proc, x: np.ndarray, sizes=UNEVEN_BLOCKS) -> np.ndarray:
    out, pos = [], 0
    for s in sizes:
        out.append(proc.process(x[:, pos : pos + s]))
        pos += s
    out.append(proc.process(x[:, pos:]))
    return np.concatenate(out, axis=1)


def rms_db(y: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(y, dtype=np.float64)))))


# Plugin, options, values to change, and the tolerance of chunked vs one-shot rendering.
# x42-eq smooths parameter changes in 64-sample steps counted from each run() and
# guitarix re-initialises its convolvers when the run length changes: both are exact
# only with fixed-length runs (option fixed_block). LSP's compressor differs from
# one-shot by float rounding (3.6e-7 measured) when runs are split differently.
CASES = {
    "lsp_compressor": (LSP_COMP, {}, {"attack_threshold_db": -30.0, "ratio": 8.0}, 2e-6),
    "lsp_limiter": (LSP_LIMITER, {"fixed_block": True, "block_size": 256}, {"threshold_db": -12.0}, 0.0),
    "x42_eq": (X42_EQ, {"fixed_block": True, "block_size": 128}, {"gain_2_db": 12.0, "gain_db": -6.0}, 0.0),
    "guitarix_amp": (GX_AMP, {"fixed_block": True, "block_size": 128}, {"pregain": 12.0, "distortion": 80.0}, 0.0),
}


def test_lsp_compressor_table_from_ports():
    proc = build(LSP_COMP)
    t = proc.param_table
    # LSP's linear-gain ports are shown in dB; units come from units:unit
    th = t["attack_threshold_db"]
    assert (th.min, th.max, th.default, th.unit) == (-60.0, 0.0, -12.0, "dB")
    at = t["attack_time_ms"]
    assert (at.min, at.max, at.default, at.unit, at.scale) == (0.0, 2000.0, 20.0, "ms", "linear")  # log needs min > 0
    assert (t["ratio"].min, t["ratio"].max, t["ratio"].default, t["ratio"].scale) == (1.0, 100.0, 4.0, "log")
    assert t["knee_db"].min == -24.0  # 0.0631 G, rounded to 0.01 dB
    assert t["compression_mode"].values == (0.0, 1.0, 2.0)  # enumeration → discrete
    assert t["sidechain_mode"].values == (0.0, 1.0, 2.0, 3.0)
    assert t["high_pass_filter_frequency_hz"].scale == "log"  # pprops:logarithmic, positive range
    # the lv2:enabled (bypass) port is host-managed; meters (outputs) are not in the table
    assert "enabled" not in t.names and not any("meter" in n or "reduction" in n for n in t.names)
    assert "sidechain_mode: 0=Peak 1=RMS 2=LPF 3=SMA" in proc.describe_labels()
    assert proc.num_input_channels == 2 and proc.latency_samples == 0
    # the dB value reaches the port as linear gain
    proc.process(signal(), t.values_from_mapping({"attack_threshold_db": -24.0}))
    assert proc.port_value("al") == pytest.approx(10 ** (-24 / 20), rel=1e-6)


def test_guitarix_table_has_enumerations_and_one_instance_per_channel():
    proc = build(GX_AMP)
    t = proc.param_table
    assert t.names[:4] == ["mastergain", "pregain", "distortion", "drive"]
    assert (t["distortion"].min, t["distortion"].max, t["distortion"].default) == (1.0, 100.0, 20.0)
    assert t["model"].values == tuple(float(v) for v in range(19))
    assert "model: 0=12ax7 1=12AU7" in proc.describe_labels()
    assert proc.mono_only and proc.num_input_channels is None and proc.num_instances == 2
    x = signal(seconds=0.2)
    x[1] = x[0]
    y = proc.process(x)
    assert y.shape == x.shape and np.array_equal(y[0], y[1])  # same input, same state → same output
    with pytest.raises(AudioError, match="raise option 'channels'"):
        proc.process(signal(channels=3, seconds=0.05))


@pytest.mark.parametrize("case", list(CASES))
def test_parameters_change_the_output(case):
    uri, options, changes, _ = CASES[case]
    x = signal()
    default = build(uri, **options).process(x)
    proc = build(uri, **options)
    changed = proc.process(x, proc.param_table.values_from_mapping(changes))
    assert default.shape == changed.shape == (2, x.shape[1])
    assert np.abs(changed - default).max() > 0.01, f"{case}: {changes} did not change the output"


@pytest.mark.parametrize("case", list(CASES))
def test_blocks_equal_one_shot_and_reset_equals_fresh(case):
    uri, options, changes, tol = CASES[case]
    x = signal(seconds=0.6)
    first, second = build(uri, **options), build(uri, **options)
    values = first.param_table.values_from_mapping(changes)
    ref = first.process(x, values)
    if not np.array_equal(ref, second.process(x, values)):
        pytest.skip(f"{uri} is not deterministic between fresh instances")
    proc = build(uri, **options)
    proc.process(np.zeros((2, 10), np.float32), values)
    proc.reset()  # a fresh instance again, values kept
    chunked = blocks(proc, x)
    assert chunked.shape == ref.shape
    assert np.abs(chunked - ref).max() <= tol, f"{case}: blocks differ from one call"
    proc.reset()
    assert np.array_equal(proc.process(x), ref), f"{case}: reset() differs from a fresh instance"


def test_split_runs_are_exact_only_with_fixed_blocks_for_guitarix():
    """Without fixed_block guitarix re-initialises when run() lengths change (measured > 0.1)."""
    x = signal(seconds=0.6)
    ref = build(GX_AMP).process(x)
    assert np.abs(blocks(build(GX_AMP), x) - ref).max() > 0.1
    ref_fixed = build(GX_AMP, fixed_block=True, block_size=128).process(x)
    assert np.array_equal(blocks(build(GX_AMP, fixed_block=True, block_size=128), x), ref_fixed)
    assert not ref_fixed[:, :128].any()  # the host FIFO's delay: block_size silent samples first


def test_worker_requests_are_served_and_stay_block_exact(monkeypatch):
    """guitarix loads a new tube model through the worker extension (work runs after each run())."""
    import deepafx.hosts.lv2 as lv2

    served = []
    serve = lv2._Instance._serve_worker
    monkeypatch.setattr(lv2._Instance, "_serve_worker", lambda inst: (served.append(len(inst.requests)), serve(inst)))
    options = {"fixed_block": True, "block_size": 128}
    x = signal(seconds=0.6)
    default = build(GX_AMP, **options).process(x)
    proc = build(GX_AMP, **options)
    values = proc.param_table.values_from_mapping({"model": 5.0})
    ref = proc.process(x, values)
    assert sum(served) >= 2 and np.abs(ref - default).max() > 0.05  # one request per instance
    chunked = build(GX_AMP, **options)
    out = [chunked.process(x[:, :500], values)] + [chunked.process(x[:, i : i + 777]) for i in range(500, x.shape[1], 777)]
    assert np.array_equal(np.concatenate(out, axis=1), ref)


@pytest.mark.parametrize("fixed", [None, 256])
def test_latency_is_reported_and_aligns_the_output(fixed):
    options = {"fixed_block": True, "block_size": fixed} if fixed else {}
    proc = build(LSP_LIMITER, **options)
    expected = 220 + (fixed or 0)  # 5 ms look-ahead at 44.1 kHz (+ the host FIFO)
    assert proc.latency_samples == expected
    x = np.zeros((2, 4096), np.float32)
    x[:, 100] = 0.25  # below the threshold: the limiter only delays
    y = blocks(proc, x, (50, 1000))
    assert int(np.argmax(np.abs(y[0]))) == 100 + expected
    assert y[0, 100 + expected] == pytest.approx(0.25, rel=1e-4)


def test_unreported_latency_is_added_where_a_plugin_hides_its_delay():
    """guitarix's JCM-800 model resamples internally: its output lags the input by about 38 samples more
    than it reports. The option declares it, and the cross-correlation peak then lands on the latency."""
    rng = np.random.default_rng(0)
    x = np.zeros((1, 16384), np.float32)
    x[0, 1000:9000] = 0.003 * rng.standard_normal(8000)  # quiet noise: the amp stays nearly linear
    lags = {}
    for extra in (0, 38):
        proc = build(GX_JCM800, channels=1, fixed_block=True, block_size=128, unreported_latency=extra)
        assert proc.latency_samples == 128 + extra
        y = proc.process(x, proc.param_table.defaults())[0].astype(np.float64)
        c = np.correlate(y, x[0].astype(np.float64), "full")
        lags[extra] = int(np.argmax(np.abs(c))) - (x.shape[1] - 1) - proc.latency_samples
    assert abs(lags[0]) > 30  # what the plugin reports is 38 samples short
    assert abs(lags[38]) <= 1  # within a sample once declared
    for bad in (-1, 2.5, "ten", True):
        with pytest.raises(PluginError, match="unreported_latency"):
            build(GX_JCM800, channels=1, unreported_latency=bad)


def test_latency_follows_the_lookahead_parameter():
    proc = build(LSP_COMP)
    assert proc.latency_samples == 0
    values = proc.param_table.values_from_mapping({"sidechain_lookahead_ms": 10.0})
    proc.process(signal(seconds=0.05), values)
    assert proc.latency_samples == 441


def test_bad_values_raise_parameter_error_naming_the_parameter():
    proc = build(LSP_COMP)
    values = proc.param_table.defaults()
    values[proc.param_table.index("attack_threshold_db")] = 3.0
    with pytest.raises(ParameterError, match="attack_threshold_db"):
        proc.process(signal(seconds=0.05), values)
    values = proc.param_table.defaults()
    values[proc.param_table.index("ratio")] = float("nan")
    with pytest.raises(ParameterError, match="ratio"):
        proc.process(signal(seconds=0.05), values)


def test_inline_param_map_selects_renames_and_narrows():
    proc = build(LSP_COMP, param_map={"only_listed": True, "params": {
        "al": {"name": "threshold_db", "min": -48, "max": 0},
        "at": {"name": "attack_ms", "min": 0.5, "max": 100, "scale": "log"},
        "cr": {"name": "ratio", "max": 20}}})
    t = proc.param_table
    assert t.names == ["threshold_db", "attack_ms", "ratio"]
    assert (t["attack_ms"].min, t["attack_ms"].max, t["attack_ms"].scale) == (0.5, 100.0, "log")
    assert (t["threshold_db"].min, t["ratio"].max) == (-48.0, 20.0)
    with pytest.raises(ParameterError, match="no plugin parameter named 'nope'"):
        build(LSP_COMP, param_map={"params": {"nope": {"max": 1}}})


def test_errors_name_the_fix(monkeypatch):
    require(LSP_COMP)
    with pytest.raises(PluginError, match="closest installed: http://lsp-plug.in/plugins/lv2/compressor_stereo"):
        build_processor(ProcessorSpec(backend="lv2", name="p", options={"uri": LSP_COMP[:-3] + "reo_x"}), SR)
    with pytest.raises(PluginError, match="options need 'uri'"):
        build_processor(ProcessorSpec(backend="lv2", name="p", options={"path": LSP_COMP}), SR)
    import deepafx.hosts.lv2 as lv2

    monkeypatch.setattr(lv2, "PROVIDED_FEATURES", tuple(f for f in lv2.PROVIDED_FEATURES if f != lv2.URID_MAP))
    with pytest.raises(PluginError, match="requires LV2 feature.*urid#map"):
        build(LSP_COMP)


def test_plugins_command_lists_and_describes_lv2(capsys):
    require(LSP_COMP)
    from deepafx.commands import plugins

    assert LSP_COMP in plugins.find_plugins()["lv2"]
    plugins.run(argparse.Namespace(details=None, json=False))
    assert f"{LSP_COMP:<64} LSP Compressor Stereo" in capsys.readouterr().out
    info = plugins.details(LSP_COMP)  # loads in a child process
    assert info["backend"] == "lv2" and info["options"] == {"uri": LSP_COMP} and info["num_input_channels"] == 2
    th = next(p for p in info["params"] if p["name"] == "attack_threshold_db")
    assert (th["min"], th["max"], th["unit"]) == (-60.0, 0.0, "dB")
    assert "sidechain_mode: 0=Peak 1=RMS 2=LPF 3=SMA" in info["labels"]


def test_packaged_lv2_chains_load_and_render_block_exact():
    from deepafx.chain import ChainSpec

    require(LSP_COMP)
    lv2, vst2 = ChainSpec.from_file("lsp_mastering_lv2"), ChainSpec.from_file("lsp_mastering")
    chain_ = lv2.build()
    try:
        # the LV2 chain learns what the VST2 chain learns, under the same names
        assert chain_.param_table.names == [f"{p.name}.{n}" for p in vst2.processors for n in p.learn]
        assert chain_.latency_samples == 256 + 64 + 220
        x = signal(seconds=0.6, level=0.3)
        theta = np.random.default_rng(0).uniform(0.2, 0.8, len(chain_.param_table))
        one = chain_.process(x, theta)
        chain_.reset()
        chunked = [chain_.process(x[:, i : i + 777], theta) for i in range(0, x.shape[1], 777)]
        assert np.array_equal(np.concatenate(chunked, axis=1), one)
    finally:
        chain_.close()
    amp = ChainSpec.from_file("guitarix_amp").build()
    try:
        assert amp.param_table.names[:2] == ["amp.pregain_db", "amp.distortion"] and amp.latency_samples == 128
        assert amp.process(signal(channels=1, seconds=0.1)).shape == (1, 4410)
    finally:
        amp.close()
    for name, latency in (("guitarix_jcm800", 128 + 38), ("guitarix_metal_head", 128 + 24)):  # delays they hide, declared
        other = ChainSpec.from_file(name).build()
        try:
            assert other.latency_samples == latency
            assert np.all(np.isfinite(other.process(signal(channels=1, seconds=0.1))))
        finally:
            other.close()


# -- through the Fx layer (render workers build the instances from the spec) ------------

FX_CASES = {
    "lsp_compressor": (LSP_COMP, {}, ["attack_threshold_db", "ratio", "makeup_gain_db"]),
    "x42_eq": (X42_EQ, {"fixed_block": True, "block_size": 128}, ["gain_1_db", "gain_2_db", "gain_3_db"]),
    "guitarix_amp": (GX_AMP, {"fixed_block": True, "block_size": 128}, ["pregain", "distortion", "bass", "treble"]),
}


@pytest.mark.parametrize("case", list(FX_CASES))
def test_gradient_through_lv2_plugin_points_downhill(case):
    from deepafx.fx import FxLayer
    from deepafx.losses import MultiResolutionSTFTLoss

    uri, options, learn = FX_CASES[case]
    require(uri)
    spec = chain({"backend": "lv2", "name": "fx", "options": {"uri": uri, **options}, "learn": learn},
                 sample_rate=SR)
    loss_fn = MultiResolutionSTFTLoss(fft_sizes=(1024, 256, 64))
    x = torch.from_numpy(music_like(np.random.default_rng(1), 2, 8192, SR))[None]
    with FxLayer(spec, batch_size=1, num_workers=1, num_perturbations=4, epsilon=0.02, seed=0) as fx:
        p = fx.num_params
        g = torch.Generator().manual_seed(4)
        theta_star = torch.rand(1, p, generator=g) * 0.6 + 0.2
        theta0 = (theta_star + 0.15 * (torch.rand(1, p, generator=g) * 2 - 1)).clamp(0, 1)

        def render(theta, grad=False):
            fx.reset()
            t = theta.clone().requires_grad_(grad)
            return fx(x, t) if grad else fx.render(x, t), t

        target = render(theta_star)[0]
        l0 = loss_fn(render(theta0)[0], target).item()
        grads = []
        for _ in range(3):
            y, t = render(theta0, grad=True)
            loss_fn(y, target).backward()
            grads.append(t.grad)
        gsp = torch.stack(grads).mean(0)
        assert torch.isfinite(gsp).all() and gsp.abs().sum() > 0
        step = 0.1 * gsp / gsp.norm()
        l1 = loss_fn(render((theta0 - step).clamp(0, 1))[0], target).item()
    assert l1 < l0, f"{case}: loss {l0:.3g} → {l1:.3g} after a step along −g"
