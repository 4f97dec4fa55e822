"""Real third-party plugins through the ``vst3``, ``dawdreamer`` and ``faust`` backends.

Plugins come from Debian packages (zam-plugins, lsp-plugins-vst) and from
``plugins/faust``; a test skips, with the reason, only when its plugin file is
absent. Outputs are compared only after checking that two fresh instances of the
plugin give identical output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepafx.chain import PLUGINS_DIR, ChainSpec
from deepafx.hosts.base import AudioError, PluginError, ProcessorSpec, build_processor
from deepafx.params import ParameterError

SR = 44100
ZAM_COMP = Path("/usr/lib/vst3/ZamCompX2.vst3")
ZAM_MAXIM = Path("/usr/lib/vst3/ZaMaximX2.vst3")
ZAM_EQ2 = Path("/usr/lib/vst3/ZamEQ2.vst3")
ZAM_COMP_VST2 = Path("/usr/lib/vst/ZamCompX2-vst.so")
LSP_COMP = Path("/usr/lib/vst/lsp-plugins/compressor-stereo.so")
TONE_EQ = PLUGINS_DIR / "faust" / "tone_eq.dsp"
TUBE = PLUGINS_DIR / "faust" / "tube_preamp.dsp"
UNEVEN_BLOCKS = (100, 1000, 3000, 1024, 5000)  # includes a block shorter than ZaMaximX2's latency


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not installed (Debian: apt-get install zam-plugins lsp-plugins-vst)")
    return path


def signal(channels: int = 2, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    """Noise whose level swings over 24 dB at 4 Hz, so compressors act and release."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 10 ** (-12 / 20 * (1 + np.sin(2 * np.pi * 4 * np.arange(n) / SR)))
    return (0.5 * env * rng.standard_normal((channels, n))).astype(np.float32)


def rms_db(y: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(y, dtype=np.float64)))))


def blocks(proc, x: np.ndarray, sizes=UNEVEN_BLOCKS) -> np.ndarray:
    out, pos = [], 0
    for s in sizes:
        out.append(proc.process(x[:, pos : pos + s]))
        pos += s
    out.append(proc.process(x[:, pos:]))
    return np.concatenate(out, axis=1)


def build(backend: str, **options):
    return build_processor(ProcessorSpec(backend=backend, name="p", options=options), SR)


# --------------------------------------------------------------------------- vst3


def test_vst3_table_comes_from_the_plugin():
    proc = build("vst3", path=str(require(ZAM_COMP)))
    t = proc.param_table
    assert t.names == ["attack_ms", "release_ms", "knee_db", "ratio", "threshold_db", "makeup_db", "slew",
                       "stereo_detection", "sidechain"]
    # host pseudo-parameters and the output meters are not in the table
    assert not {"buffer_size_frames", "sample_rate_frames", "current_program", "gain_reduction_db",
                "output_level_db"} & set(t.names)
    th = t["threshold_db"]
    assert (th.min, th.max, th.default, th.unit) == (-80.0, 0.0, 0.0, "dB")
    assert (t["ratio"].min, t["ratio"].max) == (1.0, 20.0)
    assert t["attack_ms"].scale == "log" and t["attack_ms"].default == pytest.approx(10.0, abs=1e-4)
    assert t["release_ms"].default == pytest.approx(80.0, abs=1e-4)
    assert t["stereo_detection"].values == (0.0, 1.0)
    assert proc.num_input_channels == 2 and proc.latency_samples == 0
    proc.set_values(t.values_from_mapping({"threshold_db": -33.3, "attack_ms": 2.5}))
    assert float(proc.display_text("threshold_db")) == pytest.approx(-33.3, abs=1e-3)
    assert float(proc.display_text("attack_ms")) == pytest.approx(2.5, abs=1e-3)


def test_vst3_parameters_change_output():
    x = signal()
    proc = build("vst3", path=str(require(ZAM_COMP)))
    dry = proc.process(x, proc.param_table.defaults())  # threshold 0 dB: barely compresses
    proc.reset()
    squashed = proc.process(x, proc.param_table.values_from_mapping({"threshold_db": -40.0, "ratio": 10.0}))
    assert rms_db(x) - rms_db(squashed) > 6.0
    assert abs(rms_db(x) - rms_db(dry)) < 1.0


def test_vst3_state_carries_across_blocks_and_reset_restores_it():
    x = signal()
    values = None
    outs = []
    for _ in range(2):  # determinism first: two fresh instances
        proc = build("vst3", path=str(require(ZAM_COMP)))
        values = proc.param_table.values_from_mapping({"threshold_db": -30.0, "ratio": 8.0, "release_ms": 300.0})
        outs.append(proc.process(x, values))
    assert np.array_equal(outs[0], outs[1])
    one_shot = outs[0]
    assert one_shot.shape == x.shape
    proc = build("vst3", path=str(ZAM_COMP))
    proc.set_values(values)
    chunked = blocks(proc, x)
    assert chunked.shape == x.shape
    np.testing.assert_array_equal(chunked, one_shot)
    proc.reset()
    np.testing.assert_array_equal(proc.process(x), one_shot)


def test_vst3_latency_is_reported_and_kept_across_blocks():
    proc = build("vst3", path=str(require(ZAM_MAXIM)))
    latency = proc.latency_samples
    assert latency == 480  # ZaMaximX2's look-ahead at 44.1 kHz
    click = np.zeros((2, 8000), np.float32)
    click[:, 1000] = 0.25  # far below threshold: passes unchanged, only delayed
    y = proc.process(click)
    assert y.shape == click.shape
    assert int(np.argmax(np.abs(y[0]))) == 1000 + latency
    assert np.abs(y[:, : 1000 + latency]).max() < 1e-6
    x = signal()
    fresh = [build("vst3", path=str(ZAM_MAXIM)) for _ in range(2)]
    values = fresh[0].param_table.values_from_mapping({"threshold_db": -12.0})
    one_shot = fresh[0].process(x, values)
    assert np.array_equal(one_shot, fresh[1].process(x, values))
    assert np.abs(one_shot[:, :latency]).max() == 0.0  # the delay line starts silent
    proc = build("vst3", path=str(ZAM_MAXIM))
    proc.set_values(values)
    np.testing.assert_array_equal(blocks(proc, x), one_shot)  # first block (100) shorter than the latency
    proc.reset()
    np.testing.assert_array_equal(proc.process(x), one_shot)


def test_vst3_mono_only_plugin_runs_one_instance_per_channel():
    proc = build("vst3", path=str(require(ZAM_EQ2)), channels=2)
    assert proc.mono_only and proc.num_instances == 2 and proc.num_input_channels is None
    values = proc.param_table.values_from_mapping({"boost_cut_1_db": 12.0})
    x = np.concatenate([signal(1, seed=1), signal(1, seed=2)])
    y = proc.process(x, values)
    assert y.shape == x.shape
    for c in range(2):  # each channel equals a fresh instance fed that channel alone
        alone = build("vst3", path=str(ZAM_EQ2))
        np.testing.assert_array_equal(alone.process(x[c : c + 1], values), y[c : c + 1])
    proc.reset()
    np.testing.assert_array_equal(blocks(proc, x), y)  # both instances keep their own state
    with pytest.raises(AudioError, match="channels"):
        proc.process(signal(3))


def test_vst3_bad_values_names_and_paths_raise_clear_errors(tmp_path):
    proc = build("vst3", path=str(require(ZAM_COMP)))
    values = proc.param_table.defaults()
    values[proc.param_table.index("threshold_db")] = 10.0
    with pytest.raises(ParameterError, match="threshold_db"):
        proc.process(signal(), values)
    with pytest.raises(ParameterError, match="no_such_knob"):
        proc.param_table.values_from_mapping({"no_such_knob": 1.0})
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("params:\n  no_such_knob: {name: x}\n")
    with pytest.raises(ParameterError, match="no_such_knob.*known parameters: .*threshold_db"):
        build("vst3", path=str(ZAM_COMP), param_map=str(bad_map))
    with pytest.raises(PluginError, match=r"tried: .*/usr/lib/vst3/NoSuchPlugin.vst3.*zam-plugins"):
        build("vst3", path="NoSuchPlugin")
    if Path("/usr/lib/vst3/ZamVerb.vst3").exists():
        with pytest.raises(PluginError, match="hangs.*dawdreamer"):
            build("vst3", path="ZamVerb")


# --------------------------------------------------------------------------- dawdreamer (VST2)


def test_dawdreamer_lsp_table_and_units():
    proc = build("dawdreamer", path=str(require(LSP_COMP)), param_map="lsp_compressor_stereo.yaml")
    t = proc.param_table
    assert t.names[:6] == ["threshold_db", "ratio", "attack_ms", "release_ms", "knee_db", "makeup_db"]
    assert (t["threshold_db"].default, t["ratio"].default, t["attack_ms"].default, t["release_ms"].default) == (
        -12.0, 4.0, 20.0, 100.0)
    assert (t["attack_ms"].min, t["attack_ms"].max, t["attack_ms"].scale) == (0.5, 500.0, "log")
    assert t["detection"].values == (0.0, 1.0, 2.0, 3.0)
    # LSP's normalized->ms curve is not linear; the sampled map still lands on the value asked for
    for name, value in [("attack_ms", 0.8), ("attack_ms", 50.0), ("release_ms", 333.0), ("ratio", 2.5)]:
        proc.set_values(t.values_from_mapping({name: value}))
        assert float(proc.display_text(name)) == pytest.approx(value, rel=0.01)
    proc.set_values(t.values_from_mapping({"detection": 3}))
    assert proc.display_text("detection") == "SMA"


def test_dawdreamer_lsp_renders_with_state_replay():
    x = signal()
    settings = {"threshold_db": -40.0, "ratio": 10.0, "release_ms": 200.0}
    fresh = [build("dawdreamer", path=str(require(LSP_COMP)), param_map="lsp_compressor_stereo.yaml")
             for _ in range(2)]
    values = fresh[0].param_table.values_from_mapping(settings)
    one_shot = fresh[0].process(x, values)
    assert np.array_equal(one_shot, fresh[1].process(x, values))
    assert one_shot.shape == x.shape
    assert rms_db(x) - rms_db(one_shot) > 6.0
    fresh[0].reset()
    np.testing.assert_array_equal(fresh[0].process(x, values), one_shot)
    # LSP keeps part of its state through dawdreamer's per-render reset; replaying the
    # input context brings blocks close to the one-shot output, blocks alone do not.
    errors = {}
    for context_seconds in (0.0, 1.0):
        proc = build("dawdreamer", path=str(LSP_COMP), param_map="lsp_compressor_stereo.yaml", context_seconds=context_seconds)
        proc.set_values(values)
        errors[context_seconds] = float(np.abs(blocks(proc, x) - one_shot).max())
    assert errors[1.0] < 2e-3
    assert errors[0.0] > 4 * errors[1.0]


def test_dawdreamer_replay_is_exact_for_a_plugin_that_clears_on_render():
    x = signal()
    fresh = [build("dawdreamer", path=str(require(ZAM_COMP_VST2))) for _ in range(2)]
    values = fresh[0].param_table.values_from_mapping({"threshold_db": -30.0, "ratio": 8.0, "release_ms": 300.0})
    one_shot = fresh[0].process(x, values)
    assert np.array_equal(one_shot, fresh[1].process(x, values))
    for context_seconds in (None, 1.0):  # whole history, or a context longer than the signal
        proc = build("dawdreamer", path=str(ZAM_COMP_VST2), context_seconds=context_seconds)
        proc.set_values(values)
        np.testing.assert_array_equal(blocks(proc, x), one_shot)


@pytest.mark.slow
def test_dawdreamer_samples_slow_to_set_parameters_coarsely(tmp_path):
    """ZamVerb's Room reloads an impulse response per change (about 0.13 s): 33 samples, not 1001."""
    path = require(Path("/usr/lib/vst/ZamVerb-vst.so"))
    param_map = tmp_path / "zamverb.yaml"
    param_map.write_text("params:\n  Room: {name: room}\n")
    proc = build("dawdreamer", path=str(path), param_map=str(param_map))
    assert proc.param_table["room"].values == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    for room in (2.0, 5.0):
        proc.set_values(proc.param_table.values_from_mapping({"room": room}))
        assert proc.display_text("room") == f"{room:g}"


def test_dawdreamer_errors():
    with pytest.raises(PluginError, match="tried: .*lsp-plugins-vst"):
        build("dawdreamer", path="no-such-plugin.so")
    with pytest.raises(PluginError, match="unknown options"):
        build("dawdreamer", path=str(require(LSP_COMP)), colour="red")
    proc = build("dawdreamer", path=str(LSP_COMP), param_map="lsp_compressor_stereo.yaml")
    values = proc.param_table.defaults()
    values[proc.param_table.index("ratio")] = 50.0  # the plugin allows 100, the map narrows to 20
    with pytest.raises(ParameterError, match="ratio"):
        proc.process(signal(), values)


# --------------------------------------------------------------------------- faust


def test_faust_tone_eq_table_and_response():
    proc = build("faust", dsp=require(TONE_EQ).name)
    t = proc.param_table
    assert t.names == ["low_gain_db", "low_freq_hz", "mid_gain_db", "mid_freq_hz", "mid_q", "high_gain_db",
                       "high_freq_hz"]
    assert (t["low_freq_hz"].unit, t["low_freq_hz"].scale, t["low_freq_hz"].default) == ("Hz", "log", 200.0)
    assert (t["low_gain_db"].min, t["low_gain_db"].max, t["low_gain_db"].unit) == (-15.0, 15.0, "dB")
    x = signal(1, seconds=1.0)
    flat = proc.process(x, t.defaults())
    proc.reset()
    boosted = proc.process(x, t.values_from_mapping({"low_gain_db": 12.0, "low_freq_hz": 200.0}))
    f = np.fft.rfftfreq(x.shape[1], 1 / SR)

    def band_db(y, lo, hi):
        spec = np.abs(np.fft.rfft(y[0])) ** 2
        return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum())

    assert band_db(boosted, 20, 60) - band_db(flat, 20, 60) == pytest.approx(12.0, abs=1.0)
    assert abs(band_db(boosted, 4000, 8000) - band_db(flat, 4000, 8000)) < 0.5


def test_faust_tube_preamp_state_drive_and_mono_channels():
    dsp = require(TUBE).name
    x = np.concatenate([signal(1, seed=3), 0.3 * signal(1, seed=4)])
    fresh = [build("faust", dsp=dsp, context_seconds=None) for _ in range(2)]
    assert fresh[0].mono_only and fresh[0].num_input_channels is None
    values = fresh[0].param_table.values_from_mapping({"drive_db": 12.0, "bass": 0.8})
    one_shot = fresh[0].process(x, values)
    assert np.array_equal(one_shot, fresh[1].process(x, values))
    assert one_shot.shape == x.shape
    proc = build("faust", dsp=dsp, context_seconds=None)  # Faust clears on every render: whole-history replay is exact
    proc.set_values(values)
    np.testing.assert_array_equal(blocks(proc, x), one_shot)
    proc.reset()
    np.testing.assert_array_equal(proc.process(x), one_shot)
    alone = build("faust", dsp=dsp, context_seconds=None)  # channel 1 has its own engine and state
    np.testing.assert_array_equal(alone.process(x[1:], values), one_shot[1:])

    t = np.arange(SR // 2) / SR
    sine = (0.3 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32)

    def thd(y):
        spec = np.abs(np.fft.rfft(y[0, 4410:] * np.hanning(y.shape[1] - 4410)))
        freqs = np.fft.rfftfreq(y.shape[1] - 4410, 1 / SR)
        h = [spec[np.argmin(np.abs(freqs - 220 * k))] for k in range(1, 8)]
        return float(np.sqrt(np.sum(np.square(h[1:]))) / h[0])

    proc.reset()
    clean = thd(proc.process(sine, proc.param_table.values_from_mapping({"drive_db": 0.0})))
    proc.reset()
    driven = thd(proc.process(sine, proc.param_table.values_from_mapping({"drive_db": 18.0})))
    assert driven > 3 * clean


def test_faust_errors():
    with pytest.raises(PluginError, match="undefined symbol"):
        build("faust", code="process = _ : no_such_function;")
    with pytest.raises(PluginError, match=r"tried: .*plugins/faust/missing.dsp"):
        build("faust", dsp="missing.dsp")
    with pytest.raises(PluginError, match="exactly one"):
        build("faust")
    proc = build("faust", dsp=require(TUBE).name)
    values = proc.param_table.defaults()
    values[proc.param_table.index("drive_db")] = 100.0  # Faust would not clamp this (NaN output)
    with pytest.raises(ParameterError, match="drive_db"):
        proc.process(signal(1), values)


def test_loading_dpf_plugins_leaves_the_float_environment_alone():
    from deepafx.hosts.fpenv import denormals_flushed

    assert not denormals_flushed()
    build("vst3", path=str(require(ZAM_COMP)))  # DPF switches on flush-to-zero while loading
    build("dawdreamer", path=str(require(ZAM_COMP_VST2)))
    assert not denormals_flushed()
    assert 1e-310 * 1.0 > 0.0
    proc = build("faust", dsp=require(TONE_EQ).name)  # the Faust compiler aborted under flush-to-zero
    assert len(proc.param_table) == 7


# --------------------------------------------------------------------------- chains and CLI


def test_zam_mastering_chain_loads_and_renders():
    for p in ("ZaMultiCompX2", "ZamGEQ31", "ZaMaximX2"):
        require(Path(f"/usr/lib/vst3/{p}.vst3"))
    chain = ChainSpec.from_file("chains/zam_mastering.yaml").build()
    try:
        assert len(chain.param_table) == 49
        assert chain.latency_samples == 480
        x = 0.5 * signal(seconds=0.5)
        mid = chain.process(x, np.full(49, 0.5))
        chain.reset()
        again = chain.process(x, np.full(49, 0.5))
        np.testing.assert_array_equal(mid, again)
        chain.reset()
        other = chain.process(x, np.linspace(0.0, 1.0, 49))
        assert mid.shape == x.shape and np.all(np.isfinite(mid))
        assert np.abs(mid - other).max() > 0.05
    finally:
        chain.close()


def test_plugins_command_lists_without_loading_and_details_in_a_child():
    out = subprocess.run([sys.executable, "-m", "deepafx.cli", "plugins", "--json"], capture_output=True,
                         text=True, timeout=60, check=True)
    found = json.loads(out.stdout)
    assert str(PLUGINS_DIR / "faust" / "tube_preamp.dsp") in found["faust"]
    assert str(PLUGINS_DIR / "chains" / "zam_mastering.yaml") in found["chains"]
    assert {"vst3", "dawdreamer", "faust"} <= set(found["backends"])
    if ZAM_COMP.exists():
        assert str(ZAM_COMP) in found["vst3"]
        res = subprocess.run([sys.executable, "-m", "deepafx.cli", "plugins", "--details", "ZamCompX2", "--json"],
                             capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(res.stdout)
        assert info["backend"] == "vst3" and info["num_params"] == 9
        assert {"name": "threshold_db", "min": -80.0, "max": 0.0} == {
            k: next(p for p in info["params"] if p["name"] == "threshold_db")[k] for k in ("name", "min", "max")}
    if Path("/usr/lib/vst3/ZamVerb.vst3").exists():  # refused before any child is started
        res = subprocess.run([sys.executable, "-m", "deepafx.cli", "plugins", "--details",
                              "/usr/lib/vst3/ZamVerb.vst3"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and "hangs" in res.stderr and "ZamVerb-vst.so" in res.stderr
