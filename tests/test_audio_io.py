"""deepafx.audio: reading (truncation, NaN), conversion (5.1 downmix), silence, atomic writing; one-line CLI errors.

Real files written with soundfile (libsndfile) and truncated by cutting bytes off
their end, as an interrupted download leaves them; the `deepafx process` runs use
the real built-in mastering chain with the tiny untrained checkpoint of
tests/test_mastering_process.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import music_like
from test_mastering_process import save_tiny_checkpoint

import deepafx.commands.process as process_command
from deepafx.audio import BS775_STEREO, conform, downmix, read_audio, silence_warning, write_files_atomic
from deepafx.cli import error_message, main
from deepafx.hosts.base import AudioError
from deepafx.params import ParameterError
from deepafx.automation.process import process_file
from deepafx.workers import WorkerError

SR = 44100
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def truncate(path: Path, keep_fraction: float) -> Path:
    """Cut bytes off the end of ``path``, keeping ``keep_fraction`` of its size, as an interrupted copy does."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))
    return path


def cut_seconds(path: Path, seconds: float) -> Path:
    """Cut the last ``seconds`` of audio data off the end of ``path`` (the data chunk comes last)."""
    info = sf.info(str(path))
    frame_bytes = info.channels * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[info.subtype]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - int(round(seconds * info.samplerate)) * frame_bytes)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("fmt,subtype,ext", [
    ("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"), ("WAV", "FLOAT", "wav"), ("WAVEX", "PCM_24", "wav"),
    ("RF64", "PCM_16", "wav"), ("W64", "PCM_16", "w64"), ("AIFF", "PCM_16", "aiff"),
])
def test_truncated_file_is_refused_and_complete_file_passes(tmp_path, rng, fmt, subtype, ext):
    x = music_like(rng, 2, 3 * SR)
    path = tmp_path / f"song.{ext}"
    sf.write(str(path), x.T, SR, format=fmt, subtype=subtype)
    ok = read_audio(path)
    assert (ok.channels, ok.samples, ok.sample_rate, ok.subtype) == (2, 3 * SR, SR, subtype)
    assert ok.warnings == []
    tol = {"PCM_16": 2 ** -15, "PCM_24": 2 ** -23, "FLOAT": 1e-7}[subtype]
    np.testing.assert_allclose(ok.audio, x, atol=tol)
    # libsndfile alone reads the truncated file without complaint, 1 s long:
    cut_seconds(path, 2.0)
    assert sf.info(str(path)).frames == len(sf.read(str(path))[0]) == SR
    with pytest.raises(AudioError, match=r"is truncated: .*\(3\.00 s\) but the file holds only .*\(1\.00 s\)"):
        read_audio(path)


def test_valid_wav_variants_pass(tmp_path, rng):
    # streamed WAV: data size unknown (0xFFFFFFFF), read to the end of the file
    x = music_like(rng, 2, 4410)
    path = tmp_path / "streamed.wav"
    sf.write(str(path), x.T, SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    i = data.index(b"data")
    data[i + 4 : i + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert read_audio(path).samples == 4410
    # odd-length 8-bit mono (pad byte after the data chunk) and a LIST chunk
    odd = tmp_path / "odd.wav"
    sf.write(str(odd), x[0, :1001], 8000, subtype="PCM_U8")
    assert odd.stat().st_size % 2 == 0 and read_audio(odd).samples == 1001
    tagged = tmp_path / "tagged.wav"
    with sf.SoundFile(str(tagged), "w", SR, 2, "PCM_16") as f:
        f.title = "a title"
        f.write(x.T)
    assert b"LIST" in tagged.read_bytes() and read_audio(tagged).samples == 4410


def test_nan_missing_and_not_audio_are_refused(tmp_path, rng):
    x = music_like(rng, 2, SR)
    x[1, 22050] = np.nan
    x[0, 30000] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(str(path), x.T, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"contains NaN/Inf samples \(2, the first in channel 1 at 0\.5000 s, sample 22050\)"):
        read_audio(path)
    with pytest.raises(FileNotFoundError, match="input audio not found"):
        read_audio(tmp_path / "absent.wav")
    (tmp_path / "text.wav").write_text("not audio\n")
    with pytest.raises(AudioError, match="cannot read"):
        read_audio(tmp_path / "text.wav")
    with pytest.raises(AudioError, match="is a folder"):
        read_audio(tmp_path)


def test_truncated_input_in_pairs_and_match(tmp_path, rng):
    from deepafx.recipes.dexed_matching.match import prepare_input
    from deepafx.recipes.mastering.pairs import load_pairs

    un, ma = tmp_path / "un", tmp_path / "ma"
    un.mkdir()
    ma.mkdir()
    x = music_like(rng, 2, 2 * SR)
    sf.write(str(un / "song.wav"), x.T, SR, subtype="PCM_16")
    sf.write(str(ma / "song.wav"), x.T, SR, subtype="PCM_16")
    truncate(ma / "song.wav", 0.5)
    with pytest.raises(AudioError, match=r"ma/song\.wav is truncated"):
        load_pairs(un, ma, SR)
    with pytest.raises(AudioError, match=r"ma/song\.wav is truncated"):
        prepare_input(ma / "song.wav", 16000, 1, 1.0, -20.0, say=lambda *a: None)
    six = tmp_path / "six.wav"
    sf.write(str(six), music_like(rng, 6, SR).T, SR, subtype="FLOAT")
    said = []
    y = prepare_input(six, 16000, 1, 1.0, -20.0, say=said.append)
    assert y.shape == (1, 16000)
    assert "6 channels averaged to mono" in said and any("from 44100 Hz to 16000 Hz" in s for s in said)


# --------------------------------------------------------------------------- conversion
def test_six_channels_downmix_by_bs775(rng):
    x = music_like(rng, 6, 4410)
    y, notes = conform(x, SR, SR, 2)
    a = np.float32(np.sqrt(0.5))
    L, R, C, LFE, Ls, Rs = x
    np.testing.assert_allclose(y[0], L + a * C + a * Ls, atol=1e-6)
    np.testing.assert_allclose(y[1], R + a * C + a * Rs, atol=1e-6)
    assert BS775_STEREO[:, 3].tolist() == [0.0, 0.0]  # LFE dropped
    assert notes == ["6 channels downmixed to stereo as 5.1 (L R C LFE Ls Rs) with ITU-R BS.775 coefficients: "
                     "L + 0.707 C + 0.707 Ls, R + 0.707 C + 0.707 Rs, LFE dropped"]
    # a WAVE_FORMAT_EXTENSIBLE mask that is not 5.1: plain mean
    y, notes = conform(x, SR, SR, 2, channel_mask=0x63F)
    np.testing.assert_allclose(y, np.repeat(x.mean(0, keepdims=True), 2, 0), atol=1e-7)
    assert "speaker mask 0x63F is not 5.1" in notes[0]
    # other counts: plain mean; to mono: plain mean; mono: duplicated
    y, notes = conform(x[:4], SR, 22050, 2)
    assert y.shape == (2, 2205) and notes[0].startswith("4 channels averaged to mono and duplicated to stereo")
    assert notes[1] == "resampled from 44100 Hz to 22050 Hz (soxr, very high quality)"
    np.testing.assert_allclose(downmix(x, 1)[0][0], x.mean(0), atol=1e-7)
    np.testing.assert_array_equal(downmix(x[:1], 2)[0], np.repeat(x[:1], 2, 0))
    with pytest.raises(AudioError, match="cannot convert 2 channels to 6"):
        downmix(x[:2], 6)


def test_silence_warning_levels():
    assert silence_warning(np.zeros((2, 100), np.float32), "a.wav") == (
        "a.wav is silent (digital silence, at or below -90 dBFS)")
    quiet = np.full((2, 100), 10 ** (-95 / 20), np.float32)
    assert silence_warning(quiet, "a.wav") == "a.wav is silent (sample peak -95.0 dBFS, at or below -90 dBFS)"
    assert silence_warning(quiet * 10, "a.wav") is None  # -75 dBFS


# --------------------------------------------------------------------------- writing
def test_write_files_atomic_modes_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            os.umask(umask)
            folder = tmp_path / f"u{umask:o}"
            write_files_atomic([(folder / "a.bin", b"abc"), (folder / "sub" / "b.json", b"{}")])
            assert _mode(folder / "a.bin") == mode and _mode(folder / "sub" / "b.json") == mode
            assert (folder / "a.bin").read_bytes() == b"abc"
        # a replaced file keeps its mode, as with open(path, "w")
        os.umask(0o022)
        target = tmp_path / "kept.bin"
        target.write_bytes(b"old")
        target.chmod(0o640)
        write_files_atomic([(target, b"new")])
        assert target.read_bytes() == b"new" and _mode(target) == 0o640
    finally:
        os.umask(old)
    # all or nothing: the second output cannot be written (its folder is a file) -> nothing changes
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(OSError):
        write_files_atomic([(target, b"newer"), (tmp_path / "blocker" / "x.bin", b"x")])
    assert target.read_bytes() == b"new"
    assert not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------- deepafx process
def test_truncated_input_with_force_keeps_existing_output(checkpoint, tmp_path, rng):
    inp, out, auto = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "auto.json"
    sf.write(str(inp), music_like(rng, 2, 3 * SR).T, SR, subtype="PCM_24")
    process_file(checkpoint, inp, out, automation_path=auto)
    good_audio, good_auto = out.read_bytes(), auto.read_bytes()
    modes = _mode(out), _mode(auto)
    cut_seconds(inp, 2.0)
    cmd = [sys.executable, "-m", "deepafx.cli", "process", "--checkpoint", str(checkpoint), str(inp), str(out),
           "--automation", str(auto), "--force"]
    env = {k: v for k, v in os.environ.items() if k != "DEEPAFX_DEBUG"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"deepafx process: error: {inp} is truncated: its WAV header declares "), proc.stderr
    assert "(3.00 s)" in proc.stderr and "get the complete file again" in proc.stderr
    assert out.read_bytes() == good_audio and auto.read_bytes() == good_auto
    assert (_mode(out), _mode(auto)) == modes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.json", "in.wav", "out.wav"]


def test_debug_shows_the_traceback(checkpoint, tmp_path, rng, monkeypatch, capsys):
    inp = tmp_path / "in.wav"
    sf.write(str(inp), music_like(rng, 2, SR).T, SR, subtype="PCM_16")
    truncate(inp, 0.5)
    argv = ["process", "--checkpoint", str(checkpoint), str(inp), str(tmp_path / "out.wav")]
    monkeypatch.delenv("DEEPAFX_DEBUG", raising=False)
    assert main(argv) == 1
    with pytest.raises(AudioError, match="truncated"):
        main(argv + ["-v"])
    with pytest.raises(AudioError, match="truncated"):
        main(["-v"] + argv)
    monkeypatch.setenv("DEEPAFX_DEBUG", "1")
    with pytest.raises(AudioError, match="truncated"):
        main(argv)
    assert not (tmp_path / "out.wav").exists()


def test_six_channel_input_is_downmixed(checkpoint, tmp_path, rng, umask_022):
    x = music_like(rng, 6, SR)
    six, stereo = tmp_path / "six.wav", tmp_path / "stereo.wav"
    sf.write(str(six), x.T, SR, format="WAVEX", subtype="FLOAT")
    assert read_audio(six).channel_mask == 0x3F  # libsndfile writes a 5.1 mask
    np.testing.assert_allclose(downmix(x, 2)[0], BS775_STEREO @ x, atol=1e-6)
    sf.write(str(stereo), downmix(x, 2)[0].T, SR, subtype="FLOAT")
    res = process_file(checkpoint, six, tmp_path / "out6.wav", automation_path=tmp_path / "a.json",
                       plot_path=tmp_path / "fig.png")
    assert res.input_channels == 6 and res.output_channels == 2
    assert any("6 channels downmixed to stereo as 5.1" in n and "ITU-R BS.775" in n for n in res.notes)
    assert "ITU-R BS.775" in res.summary()
    process_file(checkpoint, stereo, tmp_path / "out2.wav")
    y6 = sf.read(str(tmp_path / "out6.wav"), dtype="float32", always_2d=True)[0]
    y2 = sf.read(str(tmp_path / "out2.wav"), dtype="float32", always_2d=True)[0]
    assert y6.shape == (SR, 2)
    np.testing.assert_array_equal(y6, y2)  # the 5.1 file masters exactly as its BS.775 downmix
    # outputs written atomically get the umask's permissions: audio, automation, PNG
    for name in ("out6.wav", "a.json", "fig.png"):
        assert _mode(tmp_path / name) == 0o644, name


def test_silence_is_processed_with_a_warning(checkpoint, tmp_path, capsys):
    inp, out, auto = tmp_path / "silence.wav", tmp_path / "out.wav", tmp_path / "auto.json"
    sf.write(str(inp), np.zeros((33075, 2), np.float32), SR, subtype="PCM_16")
    rc = main(["process", "--checkpoint", str(checkpoint), str(inp), str(out), "--automation", str(auto)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.err == (f"deepafx process: warning: {inp} is silent (digital silence, at or below -90 dBFS): "
                       "processed anyway; the output is silent too\n")
    info = sf.info(str(out))
    assert (info.frames, info.channels, info.samplerate, info.subtype) == (33075, 2, SR, "PCM_16")
    y = sf.read(str(out), dtype="float32")[0]
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) == 0.0
    doc = json.loads(auto.read_text())
    values = np.array([p["values"] for p in doc["parameters"].values()])
    assert values.shape == (17, 3) and np.all(np.isfinite(values))


# --------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("exc,line", [
    (FileNotFoundError("chain 'zam_mastering' not found;\n  tried: a.yaml\n  tried: b.yaml"),
     "chain 'zam_mastering' not found; tried: a.yaml tried: b.yaml"),
    (FileNotFoundError(2, "No such file or directory", "x.wav"), "x.wav: No such file or directory"),
    (PermissionError(13, "Permission denied", "/root/out.wav"), "/root/out.wav: Permission denied"),
    (ParameterError("lim.ceiling_db: 3.0 dB outside [-20, 0]"), "lim.ceiling_db: 3.0 dB outside [-20, 0]"),
    (WorkerError("render worker hung for 120 s"), "render worker hung for 120 s"),
    (ValueError(""), "ValueError"),
])
def test_user_errors_print_one_line(monkeypatch, capsys, exc, line):
    def run(args):
        raise exc

    monkeypatch.delenv("DEEPAFX_DEBUG", raising=False)
    monkeypatch.setattr(process_command, "run", run)
    assert main(["process", "--checkpoint", "c.pt", "in.wav", "out.wav"]) == 1
    assert capsys.readouterr().err == f"deepafx process: error: {line}\n"
    assert error_message(exc) == line


def test_interrupt_exits_130_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def bug(args):
        raise TypeError("a bug")

    monkeypatch.delenv("DEEPAFX_DEBUG", raising=False)
    argv = ["process", "--checkpoint", "c.pt", "in.wav", "out.wav"]
    monkeypatch.setattr(process_command, "run", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == "deepafx process: interrupted\n"
    monkeypatch.setattr(process_command, "run", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(argv)
    with pytest.raises(SystemExit) as info:  # argparse usage errors stay as they are
        main(["process"])
    assert info.value.code == 2
