"""`deepafx process`: end to end on real rendered music through the real built-in mastering chain.

The checkpoint is a tiny, untrained AutomationModel saved in the trainer's
checkpoint format (the recipe config of recipes/mastering/quick_scores.yaml with a
tiny encoder); the audio is a real piece rendered by the music dataset builder
(FluidSynth + FluidR3_GM).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from deepafx import metrics

from deepafx.audio import conform
from deepafx.assets import resolve_config
from deepafx.chain import ChainSpec
from deepafx.cli import main
from deepafx.config import load_config
from deepafx.automation.model import AutomationModel, ModelConfig, model_from_checkpoint, predict_automation
from deepafx.automation.process import Automation, process_file
from deepafx.runs import atomic_save

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TINY_MODEL = {
    "encoder": "mobilenetv2",
    "context_seconds": 1.0,
    "frame_seconds": 0.25,
    "n_mels": 32,
    "encoder_kwargs": {"width_mult": 0.25, "stages": [[1, 8, 1, 2], [2, 16, 1, 2]], "last_channels": 32, "hidden": 16},
}
CLIP_SECONDS = 3.0


def save_tiny_checkpoint(path: Path, config: str = "mastering/quick_scores", recipe: str = "mastering",
                         level_relative: dict | None = None, spread: bool = True) -> Path:
    """A checkpoint in the trainer's format: a packaged config with a tiny, untrained encoder.

    ``level_relative`` replaces the config's (``None``: keep it); ``spread`` scales the output layer so the
    automation moves (every lane of an export, every curve of a plot).
    """
    cfg = load_config(resolve_config(config))
    cfg.pop("_path")
    cfg["model"] = dict(TINY_MODEL, level_relative=level_relative or cfg["model"].get("level_relative"))
    cfg["recipe"] = recipe
    spec = ChainSpec.from_dict(cfg["chain"])
    table = spec.param_table
    torch.manual_seed(0)
    model = AutomationModel(ModelConfig(**cfg["model"]), spec, len(table), table.defaults_normalized())
    if spread:
        with torch.no_grad():
            model.encoder.out.weight.mul_(1000.0)
    atomic_save({"recipe": recipe, "config": cfg, "chain": spec.to_dict(), "num_params": len(table),
                 "param_names": table.names, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """3 s of a real rendered piece (unmastered mix), stereo 44.1 kHz PCM_24."""
    if not os.path.exists(SOUNDFONT):
        pytest.skip(f"General MIDI SoundFont {SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    from deepafx.recipes.mastering.music import build_dataset

    d = tmp_path_factory.mktemp("music")
    build_dataset({"num_pieces": 3, "test_fraction": 0.3, "valid_fraction": 0.3, "max_piece_seconds": 5.0,
                   "min_piece_seconds": 4.0}, d)
    src = sorted((d / "test").glob("*_input.wav"))[0]
    audio, sr = sf.read(str(src), dtype="float32", always_2d=True)
    out = d / "clip.wav"
    sf.write(str(out), audio[: int(CLIP_SECONDS * sr)], sr, subtype="PCM_24")
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_process_end_to_end(checkpoint, clip, tmp_path, capsys):
    out, auto, plot = tmp_path / "out.wav", tmp_path / "auto.json", tmp_path / "fig.png"
    rc = main(["process", "--checkpoint", str(checkpoint.parent), str(clip), str(out),
               "--automation", str(auto), "--plot", str(plot)])
    assert rc == 0
    assert "real time" in capsys.readouterr().out
    src, dst = sf.info(str(clip)), sf.info(str(out))
    assert (dst.samplerate, dst.channels, dst.frames, dst.subtype) == (44100, 2, src.frames, "PCM_24")
    x = sf.read(str(clip), dtype="float32", always_2d=True)[0].T
    y = sf.read(str(out), dtype="float32", always_2d=True)[0].T
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - x)) > 1e-2  # the chain changed the audio

    doc = json.loads(auto.read_text())
    ckpt = torch.load(checkpoint, weights_only=False)
    table = ChainSpec.from_dict(ckpt["chain"]).param_table
    assert list(doc["parameters"]) == table.names and len(table) == 17
    frames = int(np.ceil(src.frames / (0.25 * 44100)))
    assert len(doc["time_s"]) == frames
    assert doc["time_s"][0] == pytest.approx(0.125) and doc["time_s"][1] - doc["time_s"][0] == pytest.approx(0.25)
    for p in table:
        entry = doc["parameters"][p.name]
        assert entry["unit"] == p.unit and (entry["min"], entry["max"]) == (p.min, p.max)
        vals = np.array(entry["values"])
        assert vals.shape == (frames,)
        assert np.all(vals >= p.min - 1e-9) and np.all(vals <= p.max + 1e-9), p.name
    assert doc["parameters"]["mbc.low_threshold_db"]["unit"] == "dB"
    assert doc["parameters"]["geq.band_1000hz_gain_db"]["unit"] == "dB"
    # The file holds exactly the model's prediction, converted to plugin units.
    model = model_from_checkpoint(ckpt)
    _, params = predict_automation(model, x, smoothing_frames=3)
    np.testing.assert_allclose(
        np.stack([doc["parameters"][n]["values"] for n in table.names], 1), table.denormalize(params), rtol=1e-6, atol=1e-6
    )
    moving = np.ptp(params, axis=0).max()
    assert moving > 1e-4  # the curves are not constant

    w, h = png_size(plot)
    assert (w, h) == (1200, 1080)
    assert plot.stat().st_size > 20_000


def test_csv_automation_has_units_in_header(checkpoint, clip, tmp_path):
    out, auto = tmp_path / "out.flac", tmp_path / "auto.csv"
    res = process_file(checkpoint, clip, out, automation_path=auto, smoothing_frames=1, block_samples=512)
    rows = auto.read_text().strip().splitlines()
    header = rows[0].split(",")
    assert header[0] == "time_s"
    assert "mbc.low_threshold_db [dB]" in header and "gain.gain_db [dB]" in header
    assert "lim.ceiling_db [dB]" not in header  # fixed in the quick chain: not automated
    assert len(header) == 1 + 17 and len(rows) == 1 + len(res.automation.times_s)
    values = np.array([[float(v) for v in r.split(",")] for r in rows[1:]])
    np.testing.assert_allclose(values[:, 1:], res.automation.values, rtol=1e-5)
    info = sf.info(str(out))
    assert (info.format, info.subtype, info.channels) == ("FLAC", "PCM_24", 2)
    assert res.realtime_factor > 0


def test_static_writes_one_parameter_set_from_the_mean_of_the_encoder_outputs(clip, tmp_path, capsys):
    """``--static``: every parameter held at the mean of the encoder's outputs over the frames, the
    level-relative gain set from the whole file's integrated loudness (a preset per file)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "run" / "best.pt", level_relative={
        "param": "gain.gain_db", "output_range_db": [-40, 0], "default_db": -20})
    out, auto = tmp_path / "out.wav", tmp_path / "auto.json"
    rc = main(["process", "--checkpoint", str(checkpoint.parent), str(clip), str(out), "--automation", str(auto),
               "--static"])
    assert rc == 0
    doc = json.loads(auto.read_text())
    assert doc["static"] is True
    ckpt = torch.load(checkpoint, weights_only=False)
    model = model_from_checkpoint(ckpt)
    table = ChainSpec.from_dict(ckpt["chain"]).param_table
    x = sf.read(str(clip), dtype="float32", always_2d=True)[0].T
    _, moving = predict_automation(model, x, smoothing_frames=1)
    assert np.ptp(moving, axis=0).max() > 1e-4  # the automation itself moves
    values = np.stack([doc["parameters"][n]["values"] for n in table.names], 1)
    assert np.ptp(values, axis=0).max() == 0.0 and len(values) == len(moving)
    # independently: the encoder over the same context windows, averaged
    hop, ctx = model.frame_samples, model.context_samples
    padded = np.zeros((2, len(moving) * hop + ctx), dtype=np.float32)
    padded[:, (ctx - hop) // 2 : (ctx - hop) // 2 + x.shape[1]] = x
    with torch.no_grad():
        raw = model.encoder(torch.from_numpy(np.stack([padded[:, i * hop : i * hop + ctx]
                                                       for i in range(len(moving))]))).double().mean(0).numpy()
    j = table.index("gain.gain_db")
    rest = [i for i in range(len(table)) if i != j]
    np.testing.assert_allclose(values[0, rest], table.denormalize(raw[None])[0, rest], rtol=1e-5, atol=1e-5)
    lo, hi = model.level_relative.output_range_db
    gain = table["gain.gain_db"]
    want_db = np.clip(lo + raw[j] * (hi - lo) - metrics.lufs(x, 44100), gain.min, gain.max)
    assert values[0, j] == pytest.approx(want_db, abs=0.01)


def test_resamples_and_duplicates_mono(checkpoint, clip, tmp_path):
    x, sr = sf.read(str(clip), dtype="float32", always_2d=True)
    mono48 = soxr.resample(x.mean(1), sr, 48000, quality="VHQ").astype(np.float32)
    inp = tmp_path / "mono48.wav"
    sf.write(str(inp), mono48, 48000, subtype="FLOAT")
    res = process_file(checkpoint, inp, tmp_path / "out.wav")
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 2, len(mono48), "FLOAT")
    assert res.input_channels == 1 and res.output_channels == 2
    assert any("resampled from 48000 Hz to 44100 Hz" in n and "back to 48000 Hz" in n for n in res.notes)
    assert any("mono input duplicated" in n for n in res.notes)
    y = sf.read(str(tmp_path / "out.wav"), dtype="float32", always_2d=True)[0].T
    np.testing.assert_allclose(y[0], y[1], atol=1e-6)  # identical channels in, identical out
    # The 48 kHz path masters like the 44.1 kHz one: same loudness within 0.5 LU.
    from deepafx.metrics import lufs

    direct, notes = conform(x.mean(1)[None], sr, sr, 2)
    assert direct.shape == (2, len(x)) and notes == [notes[0]] and "mono" in notes[0]
    inp44 = tmp_path / "mono44.wav"
    sf.write(str(inp44), x.mean(1), sr, subtype="FLOAT")
    process_file(checkpoint, inp44, tmp_path / "out44.wav")
    y44 = sf.read(str(tmp_path / "out44.wav"), dtype="float32", always_2d=True)[0].T
    assert abs(lufs(y, 48000) - lufs(y44, sr)) < 0.5


def _write(path: Path, data: np.ndarray, sr: int = 44100, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


# Silence and six channels are processed now (tests/test_audio_io.py).
@pytest.mark.parametrize("case", ["nan", "inf", "zero_length", "missing", "not_audio"])
def test_bad_input_fails_cleanly(checkpoint, tmp_path, capsys, case):
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal((22050, 2))).astype(np.float32)
    inp = tmp_path / "in.wav"
    expect = {
        "nan": "NaN/Inf", "inf": "NaN/Inf", "zero_length": "no audio",
        "missing": "not found", "not_audio": "cannot read",
    }[case]
    if case in ("nan", "inf"):
        noise[1000, 1] = np.nan if case == "nan" else np.inf
        _write(inp, noise)
    elif case == "zero_length":
        _write(inp, np.zeros((0, 2), np.float32))
    elif case == "not_audio":
        inp.write_text("this is not a wav file\n")
    out, auto = tmp_path / "out.wav", tmp_path / "auto.json"
    rc = main(["process", "--checkpoint", str(checkpoint), str(inp), str(out), "--automation", str(auto)])
    err = capsys.readouterr().err
    assert rc == 1
    assert expect in err, err
    assert err.count("\n") == 1 and err.startswith("deepafx process: error: "), err
    assert not out.exists() and not auto.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("args, expect", [
    (["--loudness", "3"], "finite LUFS value below 0"),
    (["--loudness", "nan"], "finite LUFS value below 0"),
    (["--loudness", "-14", "--loudness-param", "gain.volume"], "not a learned parameter"),
    (["--loudness-param", "gain.gain_db"], "--loudness-param needs --loudness"),
])
def test_bad_loudness_settings_fail_before_any_output(checkpoint, clip, tmp_path, capsys, args, expect):
    out = tmp_path / "out.wav"
    rc = main(["process", "--checkpoint", str(checkpoint), str(clip), str(out), *args])
    err = capsys.readouterr().err
    assert rc == 1 and expect in err and err.startswith("deepafx process: error: "), err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_is_not_overwritten_without_force(checkpoint, clip, tmp_path, capsys):
    out, plot = tmp_path / "out.wav", tmp_path / "fig.png"
    out.write_bytes(b"precious bytes")
    rc = main(["process", "--checkpoint", str(checkpoint), str(clip), str(out), "--plot", str(plot)])
    assert rc == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious bytes"
    assert not plot.exists()
    rc = main(["process", "--checkpoint", str(checkpoint), str(clip), str(out), "--force"])
    assert rc == 0
    assert sf.info(str(out)).frames == sf.info(str(clip)).frames


def test_checkpoint_of_another_recipe_is_refused(tmp_path, clip, capsys):
    other = save_tiny_checkpoint(tmp_path / "other.pt", recipe="dexed_matching")
    out = tmp_path / "out.wav"
    rc = main(["process", "--checkpoint", str(other), str(clip), str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "does not apply to 'dexed_matching' checkpoints; it applies to: mastering" in err and not out.exists()
    rc = main(["process", "--checkpoint", str(tmp_path / "nowhere"), str(clip), str(out)])
    assert rc == 1 and "checkpoint not found" in capsys.readouterr().err


def test_bad_output_names_fail_before_work(checkpoint, clip, tmp_path):
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        process_file(checkpoint, clip, tmp_path / "o.wav", automation_path=tmp_path / "a.txt")
    with pytest.raises(ValueError, match=r"\.png"):
        process_file(checkpoint, clip, tmp_path / "o.wav", plot_path=tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="extension"):
        process_file(checkpoint, clip, tmp_path / "o.xyz")
    with pytest.raises(ValueError, match="block_samples"):
        process_file(checkpoint, clip, tmp_path / "o.wav", block_samples=0)
    assert list(tmp_path.iterdir()) == []


def test_automation_units_and_most_varying():
    spec = ChainSpec.from_dict(load_config("recipes/mastering/quick_scores.yaml")["chain"])
    table = spec.param_table
    rng = np.random.default_rng(0)
    norm = np.tile(table.defaults_normalized(), (5, 1))
    norm[:, 3] = np.linspace(0, 1, 5)  # one parameter sweeps its whole range
    norm[:, 7] += rng.uniform(-0.01, 0.01, 5)
    auto = Automation(np.arange(5) * 0.5 + 0.25, np.clip(norm, 0, 1), table)
    assert auto.most_varying(2) == [3, 7]
    p = table[3]
    assert auto.values[0, 3] == pytest.approx(p.min) and auto.values[-1, 3] == pytest.approx(p.max)
    labels = auto.column_labels()
    assert labels[0] == "mbc.low_threshold_db [dB]" and labels[-1] == "gain.gain_db [dB]"
    with pytest.raises(ValueError, match="shape"):
        Automation(np.arange(4), norm, table)


def test_process_with_a_loudness_target_offsets_only_the_gain_automation(checkpoint, clip, tmp_path, capsys):
    """`--loudness -16`: the output measures -16 LUFS (BS.1770-4) and the automation file is the model's with
    `gain.gain_db` moved by one offset on every frame; every other parameter is exactly the model's."""
    from deepafx.metrics import lufs

    plain, loud = tmp_path / "plain.wav", tmp_path / "loud.wav"
    assert main(["process", "--checkpoint", str(checkpoint), str(clip), str(plain), "--automation",
                 str(tmp_path / "plain.json")]) == 0
    assert main(["process", "--checkpoint", str(checkpoint), str(clip), str(loud), "--automation",
                 str(tmp_path / "loud.json"), "--loudness", "-16", "-v"]) == 0
    y = sf.read(str(loud), dtype="float32", always_2d=True)[0].T
    y0 = sf.read(str(plain), dtype="float32", always_2d=True)[0].T
    assert abs(lufs(y0, 44100) + 16) > 1.0  # the model alone is elsewhere
    a, b = json.loads((tmp_path / "plain.json").read_text()), json.loads((tmp_path / "loud.json").read_text())
    info = b["loudness"]
    assert info["param"] == "gain.gain_db" and info["target_lufs"] == -16 and info["reached"]
    assert abs(lufs(y, 44100) + 16) <= 0.11  # PCM_24 written: within the tolerance plus quantisation
    assert info["lufs"] == pytest.approx(-16, abs=0.1) and 1 <= info["renders"] <= 4
    for name, entry in a["parameters"].items():
        va, vb = np.array(entry["values"]), np.array(b["parameters"][name]["values"])
        if name == "gain.gain_db":
            lo, hi = entry["min"], entry["max"]
            np.testing.assert_allclose(vb, np.clip(va + info["offset_db"], lo, hi), atol=1e-6)
        else:
            np.testing.assert_array_equal(va, vb)
    assert "loudness" not in a


def test_match_loudness_reaches_the_target_keeps_the_shape_and_says_when_it_cannot(clip):
    from deepafx.automation.model import render_automation
    from deepafx.automation.process import loudness_parameter, match_loudness
    from deepafx.metrics import lufs

    cfg = load_config("recipes/mastering/quick_scores.yaml")
    spec = ChainSpec.from_dict(cfg["chain"])
    table = spec.param_table
    x = sf.read(str(clip), dtype="float32", always_2d=True)[0].T
    frames = 12
    times = (np.arange(frames) + 0.5) * 0.25
    params = np.tile(table.defaults_normalized(), (frames, 1))
    j = loudness_parameter(table)
    assert table.names[j] == "gain.gain_db"
    params[:, j] = table[j].to_normalized(np.linspace(-4.0, 2.0, frames))  # a gain ramp

    def render(prm):
        return render_automation(spec, x, times, prm)

    out, y, info = match_loudness(render, params, table, -20.0, 44100)
    assert info["reached"] and abs(lufs(y, 44100) + 20) <= 0.1 and info["lufs"] == pytest.approx(lufs(y, 44100))
    np.testing.assert_array_equal(np.delete(out, j, 1), np.delete(params, j, 1))
    moved = table[j].from_normalized(out[:, j]) - table[j].from_normalized(params[:, j])
    np.testing.assert_allclose(moved, info["offset_db"], atol=1e-9)  # one offset on every frame: the ramp kept
    # Out of reach (the limiter's -1.5 dB ceiling): the closest render is kept and the info says so.
    _, y_hot, hot = match_loudness(render, params, table, -2.0, 44100, max_renders=3)
    assert not hot["reached"] and hot["renders"] == 3 and hot["lufs"] == pytest.approx(lufs(y_hot, 44100))
    assert hot["lufs"] > hot["lufs_before"]
    # Silence is returned as rendered, without LUFS values (below the -70 LUFS gate).
    silent = np.zeros_like(x)
    s_out, s_y, s_info = match_loudness(lambda prm: render_automation(spec, silent, times, prm), params, table,
                                        -14.0, 44100)
    assert s_info["lufs"] is None and not s_info["reached"] and np.array_equal(s_out, params)
    assert not np.any(s_y)
    with pytest.raises(ValueError, match="below 0"):
        match_loudness(render, params, table, 3.0, 44100)
    with pytest.raises(ValueError, match="not a learned parameter"):
        match_loudness(render, params, table, -14.0, 44100, param="gain.volume")
    from deepafx.params import Param, ParamTable

    other = ParamTable((Param("comp.ratio", 1.0, 10.0, 2.0), Param("eq.low_gain_db", -12.0, 12.0, 0.0, unit="dB")))
    with pytest.raises(ValueError, match="continuous and in dB"):
        loudness_parameter(other, "comp.ratio")
    with pytest.raises(ValueError, match=r"found 0 .*eq.low_gain_db"):
        loudness_parameter(other)  # no '<processor>.gain_db': the dB candidates are named
    assert loudness_parameter(other, "eq.low_gain_db") == 1
