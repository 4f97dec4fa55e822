"""``deepafx export --format ardour``: the session Ardour renders equals what ``deepafx process`` renders.

Fast tests: the refusal of chains no DAW hosts (through the real command line),
existing or missing paths, and the automation resolution (per-block staircase,
thinning within a tolerance). Slow test (real Ardour 7 headless tools, real LSP
LV2 plugins, a real rendered piece): the exported session, rendered by
``ardour7-export``, against ``deepafx process`` on the same input and
checkpoint, aligned by the chain's latency, and every lane read back from the
saved session against the model's automation.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_mastering_process import save_tiny_checkpoint

from deepafx.assets import resolve_config
from deepafx.chain import ChainSpec
from deepafx.cli import main
from deepafx.config import load_config
from deepafx.daw import (ARDOUR_EXPORT, ARDOUR_LUA, block_staircase, check_exportable, export_ardour,
                         read_session_lanes, render_session, thin_staircase)

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
LSP = "/usr/lib/lv2/lsp-plugins.lv2"
#: The round trip's bound: Ardour's render minus deepafx's, relative to deepafx's, in dB.
ROUND_TRIP_DB = -40.0


def write_clip(path: Path, seconds: float = 1.0, sample_rate: int = 44100) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 331 * t)], axis=1)
    sf.write(path, x.astype(np.float32), sample_rate, subtype="FLOAT")
    return path


# --------------------------------------------------------------------------- fast: refusals and paths
def test_refuses_builtin_chain_in_one_line(tmp_path, capsys):
    """mastering/quick's chain (deepafx built-ins and pedalboard stages) is refused, naming the stages; nothing written."""
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", "mastering/quick")
    out = tmp_path / "session"
    rc = main(["export", "--checkpoint", str(ckpt), str(write_clip(tmp_path / "in.wav")), str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1
    for stage in ("mbc (builtin.multiband_compressor)", "geq (builtin.graphic_eq)", "gain (pedalboard.Gain)",
                  "lim (pedalboard.BrickwallLimiter)"):
        assert stage in err
    assert "mastering/quick_lv2" in err
    assert not out.exists() and not list(tmp_path.glob(".session.*"))


def test_exportable_chains():
    """The LV2 chains pass; one pedalboard stage in an otherwise LV2 chain is named alone."""
    lv2 = ChainSpec.from_dict(load_config(resolve_config("mastering/quick_lv2"))["chain"])
    check_exportable(lv2)
    check_exportable(ChainSpec.from_file(Path("plugins/chains/lsp_mastering_lv2.yaml")))
    mixed = ChainSpec.from_dict({"name": "mixed", "sample_rate": 44100, "processors": [
        {"backend": "lv2", "name": "eq", "options": {"uri": "http://lsp-plug.in/plugins/lv2/graph_equalizer_x16_stereo"}},
        {"backend": "pedalboard.Gain", "name": "g"}]})
    with pytest.raises(ValueError, match=r"stage\(s\) g \(pedalboard\.Gain\) exist only inside deepafx"):
        check_exportable(mixed)


def test_existing_out_dir_and_missing_input_leave_everything_as_it_was(tmp_path):
    out = tmp_path / "session"
    out.mkdir()
    (out / "session.ardour").write_text("<Session/>")
    clip = write_clip(tmp_path / "in.wav")
    with pytest.raises(FileExistsError, match="--force"):
        export_ardour(tmp_path / "best.pt", clip, out)
    assert (out / "session.ardour").read_text() == "<Session/>"
    with pytest.raises(FileNotFoundError):
        export_ardour(tmp_path / "best.pt", tmp_path / "missing.wav", tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "session"]


def test_missing_ardour_is_named(tmp_path, monkeypatch):
    """Without Ardour's tools on PATH the export stops before writing, saying what to install."""
    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", "mastering/quick_lv2") if os.path.isdir(LSP) else None
    if ckpt is None:
        pytest.skip(f"LSP LV2 plugins absent ({LSP}): apt-get install lsp-plugins-lv2")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="apt-get install ardour"):
        export_ardour(ckpt, write_clip(tmp_path / "in.wav"), tmp_path / "session")
    assert not (tmp_path / "session").exists()


def test_port_values_are_what_the_lanes_hold():
    """LSP gain ports shown in dB hold linear gain; other ports their value; clipped to the port's range."""
    if not os.path.isdir(LSP):
        pytest.skip(f"LSP LV2 plugins absent ({LSP}): apt-get install lsp-plugins-lv2")
    from deepafx.hosts.lv2 import LV2Processor

    proc = LV2Processor("http://lsp-plug.in/plugins/lv2/compressor_stereo", 44100.0, param_map={
        "only_listed": True, "params": {"al": {"name": "threshold_db"}, "cr": {"name": "ratio"}}})
    try:
        ports = {p.symbol: p.index for p in proc.ports}
        values = np.array([-12.0, 3.0]) if proc.param_table.names[0] == "threshold_db" else np.array([3.0, -12.0])
        got = dict(proc.port_values(values))
        assert got[ports["al"]] == pytest.approx(10 ** (-12 / 20), rel=1e-12)
        assert got[ports["cr"]] == pytest.approx(3.0)
        with pytest.raises(ValueError, match="expected 2 table values"):
            proc.port_values(np.zeros(3))
    finally:
        proc.close()


# --------------------------------------------------------------------------- fast: automation resolution
@pytest.mark.parametrize("num_samples,block", [(10_000, 1024), (4096, 1024), (5, 2), (44_100, 333)])
def test_block_staircase_is_the_render_schedule(num_samples, block):
    """Block b starts at b*block and holds the curves interpolated at its centre (render_automation's rule)."""
    sr = 44100.0
    times = np.array([0.0, 0.05, 0.2, 1.0])
    params = np.array([[0.0, 1.0], [0.5, 0.9], [0.25, 0.1], [1.0, 0.0]])
    starts, values = block_staircase(times, params, num_samples, sr, block)
    assert starts.tolist() == list(range(0, num_samples, block))
    for b, s in enumerate(starts):
        centre = (s + min(num_samples, s + block)) / 2 / sr
        assert values[b, 0] == pytest.approx(np.interp(centre, times, params[:, 0]), abs=1e-15)
        assert values[b, 1] == pytest.approx(np.interp(centre, times, params[:, 1]), abs=1e-15)


def test_thinning_numbers():
    v = np.array([0.0, 0.005, 0.011, 0.012, 0.5, 0.5, 0.5049])
    keep, held = thin_staircase(v, 0.0)  # every change, no repeat, the blocks' own values
    assert keep.tolist() == [0, 1, 2, 3, 4, 6] and held.tolist() == v[keep].tolist()
    keep, held = thin_staircase(v, 0.01)  # runs spanning <= 0.02, each holding the middle of its span
    assert keep.tolist() == [0, 4]
    np.testing.assert_allclose(held, [0.006, 0.50245], rtol=1e-12)
    keep, held = thin_staircase(v, 0.6)
    assert keep.tolist() == [0] and held[0] == pytest.approx(0.25245)
    with pytest.raises(ValueError, match="fraction"):
        thin_staircase(v, 1.0)


@pytest.mark.parametrize("tolerance", [0.0, 0.001, 0.01, 0.05])
def test_thinned_lane_stays_within_tolerance(tolerance):
    """Holding each point's value until the next point, every block is within the tolerance; fewer points as it grows."""
    rng = np.random.default_rng(0)
    v = np.clip(0.5 + np.cumsum(rng.normal(0, 0.003, 2000)), 0, 1)
    keep, held = thin_staircase(v, tolerance)
    lane = held[np.searchsorted(keep, np.arange(len(v)), side="right") - 1]
    assert np.max(np.abs(lane - v)) <= tolerance + 1e-15
    if tolerance == 0.0:
        assert len(keep) == len(v) and np.array_equal(lane, v)
    else:
        assert len(keep) < len(thin_staircase(v, tolerance / 10)[0])
        # centred errors: a moving curve is not lagged in one direction
        assert abs(np.mean(lane - v)) < tolerance / 4


# --------------------------------------------------------------------------- slow: the round trip through Ardour
@pytest.fixture(scope="module")
def ardour():
    missing = [t for t in (ARDOUR_LUA, ARDOUR_EXPORT) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Ardour's headless tools {missing} not installed: apt-get install ardour")
    if not os.path.isdir(LSP):
        pytest.skip(f"LSP LV2 plugins absent ({LSP}): apt-get install lsp-plugins-lv2")


@pytest.fixture(scope="module")
def piece(tmp_path_factory) -> Path:
    """6 s of a real rendered piece (unmastered mix), stereo 44.1 kHz float."""
    if not os.path.exists(SOUNDFONT):
        pytest.skip(f"General MIDI SoundFont {SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    from deepafx.recipes.mastering.music import build_dataset

    d = tmp_path_factory.mktemp("music")
    build_dataset({"num_pieces": 3, "test_fraction": 0.3, "valid_fraction": 0.3, "max_piece_seconds": 8.0,
                   "min_piece_seconds": 6.0}, d)
    src = sorted((d / "test").glob("*_input.wav"))[0]
    audio, sr = sf.read(str(src), dtype="float32", always_2d=True)
    out = d / "piece.wav"
    sf.write(str(out), audio[: int(6 * sr)], sr, subtype="FLOAT")
    return out


def port_values(proc, i: int, table_values: np.ndarray) -> list[float]:
    """Port values deepafx writes for parameter ``i`` of ``proc`` at each of ``table_values`` (others at defaults)."""
    out = []
    for v in table_values:
        vals = proc.param_table.defaults()
        vals[i] = v
        out.append(proc.port_values(vals)[i][1])
    return out


def relative_db(test: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum((test - reference) ** 2) / np.sum(reference ** 2)))


@pytest.mark.slow
def test_round_trip_through_ardour(ardour, piece, tmp_path, capsys):
    """Ardour renders the exported session within 40 dB of deepafx process; the lanes read back are the model's."""
    from deepafx.automation.process import load_automation_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "best.pt", "mastering/quick_lv2")
    session = tmp_path / "session"
    assert main(["export", "--checkpoint", str(ckpt), str(piece), str(session), "--format", "ardour"]) == 0
    assert "19 lanes" in capsys.readouterr().out
    assert main(["process", "--checkpoint", str(ckpt), str(piece), str(tmp_path / "deepafx.wav"),
                 "--automation", str(tmp_path / "auto.json")]) == 0
    rendered = sf.read(str(render_session(session, tmp_path / "ardour.wav")), dtype="float64", always_2d=True)[0]
    reference, sr = sf.read(str(tmp_path / "deepafx.wav"), dtype="float64", always_2d=True)
    assert rendered.shape == reference.shape

    model, _, _ = load_automation_checkpoint(ckpt)
    chain = model.chain.build()
    latency = chain.latency_samples
    assert latency == 220  # LSP limiter's look-ahead; Ardour compensates it, deepafx process does not
    n = len(reference) - latency
    db = relative_db(rendered[:n], reference[latency:])
    print(f"round trip: {db:.1f} dB (Ardour render - deepafx process, relative to deepafx, aligned by {latency})")
    assert db <= ROUND_TRIP_DB
    assert relative_db(rendered[:n], reference[:n]) > -10  # unaligned they differ: the alignment is the latency

    # every lane read back from the saved XML, against the automation deepafx process wrote (plugin units, JSON)
    auto = json.loads((tmp_path / "auto.json").read_text())
    times = np.array(auto["time_s"])
    lanes = read_session_lanes(session / "session.ardour")
    assert len(lanes) == 19
    starts = np.arange(0, len(reference), 1024)
    centres = (starts + np.minimum(len(reference), starts + 1024)) / 2 / sr
    for k, (ps, proc, sub) in enumerate(zip(model.chain.processors, chain.processors, chain.tables)):
        for full in sub.names:
            name = full.split(".", 1)[1]
            i = proc.param_table.index(name)
            port = proc.port_values(proc.param_table.defaults())[i][0]
            lane = lanes[f"{k}:{port}"]
            assert lane["state"] == "Play" and lane["interpolation"] == "Discrete" and lane["time_domain"] == "AudioTime"
            assert lane["uri"] == ps.options["uri"]

            def model_ports(t_s: np.ndarray) -> np.ndarray:
                """The model's automation at times t_s (interpolated, plugin units), as the port values deepafx writes."""
                return np.float32(port_values(proc, i, np.interp(t_s, times, auto["parameters"][full]["values"])))

            def lane_at(samples: np.ndarray) -> np.ndarray:
                """A Discrete lane: the value of the last point at or before each sample."""
                return lane["values"][np.searchsorted(lane["samples"], samples, side="right") - 1]

            # at each render block's start: the model's automation at the block's centre
            np.testing.assert_allclose(lane_at(starts), model_ports(centres), rtol=2e-6, atol=1e-7, err_msg=full)
            # at the frame times: the model's frame values, within what the curve moves in half a block
            frames = np.round(times * sr).astype(np.int64)
            inside = frames < len(reference)
            half = 512 / sr
            at = model_ports(times)
            moved = np.maximum(np.abs(model_ports(times + half) - at), np.abs(at - model_ports(times - half)))
            err = np.abs(lane_at(frames) - at)
            assert np.all(err[inside] <= moved[inside] + 2e-6 * np.abs(at[inside]) + 1e-7), full
    chain.close()
