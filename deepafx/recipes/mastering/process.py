"""Master a file with a trained model: predict per-frame parameters, render the chain, write the results.

The pipeline behind ``deepafx process`` (DeepAFx inference, Ramírez et al.,
ICASSP 2021, https://arxiv.org/abs/2010.04237): the encoder predicts one
normalized parameter vector per frame (``frame_seconds`` hop, context window
centred on the frame), the per-frame curves are low-pass smoothed (centred
moving average of ``smoothing_frames`` frames), and the chain renders the track
in small blocks whose parameters are interpolated from the curves
(:func:`deepafx.recipes.mastering.model.predict_automation`,
:func:`deepafx.recipes.mastering.model.render_automation`).

Input handling, stated in :attr:`MasteredAudio.notes` and by the command:

* **Sample rate**: any. Audio at another rate than the model's is resampled
  with soxr (very high quality) to the model's rate, processed, and resampled
  back, so the output has the input's rate and exactly its number of samples.
* **Channels**: mono is duplicated to two channels (the model and the chain
  were trained on stereo), so a mono input gives a *stereo* output; stereo is
  processed as is; more than two channels is an error (downmix first).
* **Length**: any non-zero length (frames are zero-padded at the end).
* **Refused**: missing or unreadable files, zero-length audio, NaN/Inf
  samples, digital silence (sample peak below ``SILENCE_DBFS``), and
  checkpoints of another recipe. Nothing is written then.

Writing is atomic: every output goes to a temporary file in its destination
folder, and only when all of them are complete are they renamed over their
final names; an existing output is refused unless ``force=True``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import soundfile as sf
import soxr

from deepafx.params import ParamTable

log = logging.getLogger(__name__)

__all__ = [
    "Automation",
    "MasteredAudio",
    "ProcessResult",
    "SILENCE_DBFS",
    "check_audio_content",
    "conform_input",
    "load_mastering_checkpoint",
    "master_audio",
    "process_file",
    "read_audio",
    "resolve_checkpoint_path",
]

#: Recipe name a checkpoint must carry.
RECIPE = "mastering"
#: Inputs whose sample peak is below this level (dBFS) are refused as silent.
SILENCE_DBFS = -90.0
#: Subtypes kept from the input when the output format supports them.
_KEEP_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
_CHECKPOINT_KEYS = ("config", "chain", "num_params", "model")


# --------------------------------------------------------------------------- checkpoint
def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or the run folder holding it (``best.pt`` preferred, else ``last.pt``).

    Raises:
        FileNotFoundError: nothing usable there (the tried names are listed).
    """
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"no checkpoint in run folder {p}: tried best.pt and last.pt (written by `deepafx train`)")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p} (pass a .pt file or a run folder holding best.pt/last.pt)")
    return p


def _checkpoint_recipe(ckpt: Mapping[str, Any]) -> str | None:
    recipe = ckpt.get("recipe")
    if recipe is None and isinstance(ckpt.get("config"), Mapping):
        recipe = ckpt["config"].get("recipe")
    return recipe


def load_mastering_checkpoint(path: str | Path):
    """Load a mastering checkpoint and rebuild its model (eval mode, CPU).

    Args:
        path: Checkpoint file or run folder (see :func:`resolve_checkpoint_path`).

    Returns:
        ``(model, checkpoint_dict, checkpoint_path)``: the
        :class:`~deepafx.recipes.mastering.model.MasteringModel`, the raw dict and the
        file it came from.

    Raises:
        FileNotFoundError: no checkpoint there.
        RuntimeError: the file is not a readable checkpoint.
        ValueError: a checkpoint of another recipe, or one lacking the keys
            ``config``, ``chain``, ``num_params``, ``model``.
    """
    from deepafx.recipes.mastering.model import model_from_checkpoint
    from deepafx.trainer import load_checkpoint

    p = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(p)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{p} is not a deepafx checkpoint (got a {type(ckpt).__name__}, expected a dict)")
    recipe = _checkpoint_recipe(ckpt)
    if recipe != RECIPE:
        raise ValueError(
            f"{p} is a checkpoint of recipe {recipe!r}, not {RECIPE!r}; `deepafx process` needs a model trained "
            "with a mastering config (e.g. `deepafx train --config recipes/mastering/quick.yaml`)"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{p} lacks checkpoint key(s) {missing}; it was not written by the mastering trainer")
    try:
        model = model_from_checkpoint(ckpt)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: the model weights do not match the model settings stored with them: {exc}") from exc
    return model, ckpt, p


# --------------------------------------------------------------------------- audio in
@dataclass
class AudioFile:
    """Audio read from disk.

    Attributes:
        audio: ``(channels, samples)`` float32, full scale 1.0.
        sample_rate: Hz.
        format: soundfile container format (``"WAV"``, ``"FLAC"`` …).
        subtype: soundfile sample format (``"PCM_16"``, ``"FLOAT"`` …).
        path: Where it came from.
    """

    audio: np.ndarray
    sample_rate: int
    format: str
    subtype: str
    path: Path

    @property
    def seconds(self) -> float:
        return self.audio.shape[1] / self.sample_rate


def read_audio(path: str | Path) -> AudioFile:
    """Read an audio file with soundfile and validate its content.

    Args:
        path: Any format libsndfile reads (WAV, FLAC, AIFF, OGG, MP3 …).

    Returns:
        :class:`AudioFile`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not readable as audio, zero-length, NaN/Inf samples or
            digital silence (see :func:`check_audio_content`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input audio not found: {p}")
    try:
        info = sf.info(str(p))
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError by version
        raise ValueError(
            f"cannot read {p} as audio ({exc}); use a format libsndfile reads: {', '.join(sorted(sf.available_formats()))}"
        ) from exc
    audio = np.ascontiguousarray(data.T)
    check_audio_content(audio, int(rate), what=str(p))
    return AudioFile(audio, int(rate), info.format, info.subtype, p)


def check_audio_content(audio: np.ndarray, sample_rate: float, what: str = "audio",
                        silence_dbfs: float = SILENCE_DBFS) -> None:
    """Refuse audio a mastering model cannot meaningfully process.

    Args:
        audio: ``(channels, samples)``.
        sample_rate: Hz (used to report positions in seconds).
        what: Name used in messages (a file path).
        silence_dbfs: Sample-peak level (dBFS) at or below which audio is silent.

    Raises:
        ValueError: zero channels or samples, NaN/Inf (first position given in
            seconds), or a sample peak at or below ``silence_dbfs``.
    """
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"{what} holds no audio (shape {audio.shape}); give a file with at least one sample")
    finite = np.isfinite(audio)
    if not finite.all():
        bad = np.argwhere(~finite)
        ch, t = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(
            f"{what} contains {len(bad)} NaN/Inf sample(s), the first in channel {ch} at {t / sample_rate:.4f} s "
            f"(sample {t}); repair or re-export the file"
        )
    peak = float(np.max(np.abs(audio)))
    peak_db = -np.inf if peak == 0 else 20 * np.log10(peak)
    if peak_db <= silence_dbfs:
        level = "digital silence" if peak == 0 else f"sample peak {peak_db:.1f} dBFS"
        raise ValueError(f"{what} is silent ({level}, at or below {silence_dbfs:g} dBFS); there is nothing to master")


def conform_input(audio: np.ndarray, sample_rate: float, model_sample_rate: float) -> tuple[np.ndarray, list[str]]:
    """Bring audio to the model's format: two channels at ``model_sample_rate``.

    Args:
        audio: ``(channels, samples)`` float32 with 1 or 2 channels.
        sample_rate: Rate of ``audio`` in Hz.
        model_sample_rate: Rate of the model and its chain in Hz.

    Returns:
        ``(audio_model (2, samples_model) float32, notes)`` where ``notes``
        says what was changed (empty when nothing was).

    Raises:
        ValueError: more than two channels (downmix first).
    """
    notes = []
    c = audio.shape[0]
    if c > 2:
        raise ValueError(
            f"input has {c} channels; the mastering model processes mono or stereo. Downmix to stereo first "
            "(e.g. `ffmpeg -i IN -ac 2 OUT.wav`)"
        )
    if c == 1:
        audio = np.repeat(audio, 2, axis=0)
        notes.append("mono input duplicated to 2 channels (the model masters stereo): the output is stereo")
    if float(sample_rate) != float(model_sample_rate):
        audio = soxr.resample(np.ascontiguousarray(audio.T), float(sample_rate), float(model_sample_rate), quality="VHQ").T
        notes.append(
            f"resampled {sample_rate:g} Hz -> {model_sample_rate:g} Hz for the model and back to {sample_rate:g} Hz "
            "for the output (soxr, very high quality)"
        )
    return np.ascontiguousarray(audio, dtype=np.float32), notes


# --------------------------------------------------------------------------- automation
@dataclass
class Automation:
    """Per-frame parameter automation of the chain.

    Attributes:
        times_s: ``(frames,)`` frame-centre times in seconds from the start of the input.
        normalized: ``(frames, num_params)`` on [0, 1].
        table: The chain's learned parameter table (names ``"proc.param"``).
        values: ``(frames, num_params)`` in each plugin's own units (``table`` units).
    """

    times_s: np.ndarray
    normalized: np.ndarray
    table: ParamTable
    values: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.times_s = np.asarray(self.times_s, dtype=np.float64)
        self.normalized = np.clip(np.asarray(self.normalized, dtype=np.float64), 0.0, 1.0)
        if self.normalized.shape != (len(self.times_s), len(self.table)):
            raise ValueError(
                f"automation needs params of shape (frames, num_params) = ({len(self.times_s)}, {len(self.table)}), "
                f"got {self.normalized.shape}"
            )
        self.values = self.table.denormalize(self.normalized)

    @property
    def names(self) -> list[str]:
        return self.table.names

    @property
    def units(self) -> list[str]:
        return [p.unit for p in self.table]

    def column_labels(self) -> list[str]:
        """``"name [unit]"`` (or ``"name"`` for unitless parameters) per parameter."""
        return [f"{p.name} [{p.unit}]" if p.unit else p.name for p in self.table]

    def most_varying(self, count: int) -> list[int]:
        """Indices of the ``count`` parameters whose normalized curve varies most (standard deviation)."""
        spread = self.normalized.std(axis=0) if len(self.times_s) > 1 else np.zeros(len(self.table))
        return [int(i) for i in np.argsort(-spread, kind="stable")[:count]]

    def to_json_dict(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON form: ``time_s`` list and, per parameter, its unit, range, scale and values."""
        params = {}
        for j, p in enumerate(self.table):
            params[p.name] = {
                "unit": p.unit,
                "min": p.min,
                "max": p.max,
                "default": p.default,
                "scale": p.scale,
                "values": [float(v) for v in self.values[:, j]],
            }
        out: dict[str, Any] = {"format": "deepafx-automation-1", "time_unit": "s"}
        out.update(dict(extra or {}))
        out["time_s"] = [float(t) for t in self.times_s]
        out["parameters"] = params
        return out

    def to_csv(self) -> str:
        """CSV text: header ``time_s,<name [unit]>...``, one row per frame, plugin units."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["time_s", *self.column_labels()])
        for t, row in zip(self.times_s, self.values):
            w.writerow([f"{t:.6f}", *(f"{v:.6g}" for v in row)])
        return buf.getvalue()


def _automation_bytes(automation: Automation, path: Path, extra: Mapping[str, Any]) -> bytes:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return (json.dumps(automation.to_json_dict(extra), indent=1) + "\n").encode()
    if suffix == ".csv":
        return automation.to_csv().encode()
    raise ValueError(f"automation file {path} must end in .json or .csv")


# --------------------------------------------------------------------------- pipeline
@dataclass
class MasteredAudio:
    """Output of :func:`master_audio`.

    Attributes:
        audio: ``(2, samples)`` float32 at the input's rate, as many samples as the input.
        sample_rate: Hz (the input's).
        automation: The predicted parameter automation.
        notes: What was changed to fit the model (resampling, channels).
        predict_seconds: Wall time of the encoder, seconds.
        render_seconds: Wall time of rendering (worker start included), seconds.
        resample_seconds: Wall time of resampling both ways, seconds.
    """

    audio: np.ndarray
    sample_rate: float
    automation: Automation
    notes: list[str]
    predict_seconds: float
    render_seconds: float
    resample_seconds: float

    @property
    def seconds(self) -> float:
        """Duration of the audio in seconds."""
        return self.audio.shape[1] / self.sample_rate

    @property
    def process_seconds(self) -> float:
        """Total processing wall time in seconds."""
        return self.predict_seconds + self.render_seconds + self.resample_seconds

    @property
    def realtime_factor(self) -> float:
        """Audio seconds processed per wall-clock second (> 1: faster than real time)."""
        return self.seconds / max(self.process_seconds, 1e-9)


def master_audio(model, audio: np.ndarray, sample_rate: float, block_samples: int = 1024,
                 smoothing_frames: int = 3, batch_size: int = 16, timeout_s: float = 120.0) -> MasteredAudio:
    """Master ``audio`` with ``model``: predict the automation and render the chain.

    Args:
        model: A :class:`~deepafx.recipes.mastering.model.MasteringModel` in eval mode.
        audio: ``(channels, samples)`` float32, 1 or 2 channels, any length >= 1.
        sample_rate: Rate of ``audio`` in Hz (any; resampled with soxr when it
            differs from ``model.sample_rate``).
        block_samples: Render block in samples at the model's rate; each block
            uses the parameters interpolated at its centre time (>= 1).
        smoothing_frames: Centred moving average over frames (1 = no smoothing).
        batch_size: Context windows per encoder call.
        timeout_s: Longest one render request may take, seconds.

    Returns:
        :class:`MasteredAudio`: stereo output at ``sample_rate`` with as many
        samples as the input. The chain's state runs continuously through the
        whole track (one instance, reset at the start); its latency (0 for the
        built-in chain) is not compensated, so the output is as the chain
        renders it.

    Raises:
        ValueError: bad settings, more than two channels, NaN/Inf or silence.
        deepafx.workers.WorkerError: the chain crashed or hung in its worker.
    """
    from deepafx.recipes.mastering.model import predict_automation, render_automation

    if int(block_samples) < 1:
        raise ValueError(f"block_samples must be >= 1 sample, got {block_samples}")
    if int(smoothing_frames) < 1:
        raise ValueError(f"smoothing_frames must be >= 1 frame, got {smoothing_frames}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    check_audio_content(audio, sample_rate)
    n_in = audio.shape[1]
    t0 = time.perf_counter()
    x, notes = conform_input(audio, sample_rate, model.sample_rate)
    t_resample = time.perf_counter() - t0
    t0 = time.perf_counter()
    times_s, params = predict_automation(model, x, batch_size=batch_size, smoothing_frames=int(smoothing_frames))
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = render_automation(model.chain, x, times_s, params, block_samples=int(block_samples), timeout_s=timeout_s)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    if float(sample_rate) != float(model.sample_rate):
        y = soxr.resample(np.ascontiguousarray(y.T), float(model.sample_rate), float(sample_rate), quality="VHQ").T
    y = np.asarray(y, dtype=np.float32)
    if y.shape[1] >= n_in:
        y = y[:, :n_in]
    else:  # soxr may return a sample or two fewer
        y = np.concatenate([y, np.zeros((y.shape[0], n_in - y.shape[1]), np.float32)], axis=1)
    t_resample += time.perf_counter() - t0
    table = model.chain.param_table
    auto = Automation(times_s, params, table)
    return MasteredAudio(np.ascontiguousarray(y), float(sample_rate), auto, notes, t_predict, t_render, t_resample)


# --------------------------------------------------------------------------- writing
def _output_format(out_path: Path, in_subtype: str | None) -> tuple[str, str, str | None]:
    """``(format, subtype, note)`` for ``out_path``: the input's subtype when the format takes it, float otherwise."""
    ext = out_path.suffix.lower().lstrip(".")
    formats = {k.lower(): k for k in sf.available_formats()}
    aliases = {"aif": "aiff", "oga": "ogg", "wave": "wav"}
    fmt = formats.get(aliases.get(ext, ext))
    if fmt is None:
        raise ValueError(
            f"cannot tell the audio format of {out_path} from its extension; use one of "
            f"{', '.join('.' + k for k in sorted(formats))}"
        )
    if in_subtype in _KEEP_SUBTYPES and sf.check_format(fmt, in_subtype):
        return fmt, in_subtype, None
    for st in ("FLOAT", "PCM_24"):
        if sf.check_format(fmt, st):
            return fmt, st, f"output written as {st} ({in_subtype or 'unknown'} input subtype does not suit {fmt})"
    st = sf.default_subtype(fmt)
    return fmt, st, f"output written as {st}, the default of {fmt}"


def _encode_audio(audio: np.ndarray, sample_rate: float, fmt: str, subtype: str) -> tuple[bytes, int]:
    """Encode to bytes; PCM/compressed formats are clipped to [-1, 1]. Returns ``(bytes, clipped_samples)``."""
    data = np.asarray(audio, dtype=np.float32)
    clipped = 0
    if subtype not in ("FLOAT", "DOUBLE"):
        clipped = int(np.count_nonzero(np.abs(data) > 1.0))
        data = np.clip(data, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data.T, int(round(sample_rate)), subtype=subtype, format=fmt)
    return buf.getvalue(), clipped


def _write_all_atomic(outputs: Sequence[tuple[Path, bytes]]) -> None:
    """Write every ``(path, bytes)`` to a temporary file beside it, then rename all; on error nothing changes."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _render_plot_png(plot_fn: Callable[..., Any], *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    plot_fn(buf, *args, **kwargs)
    return buf.getvalue()


@dataclass
class ProcessResult:
    """What :func:`process_file` did.

    Attributes:
        output_path: Mastered audio file.
        automation_path: Automation file, or None.
        plot_path: PNG figure, or None.
        input_sample_rate: Hz.
        model_sample_rate: Hz.
        input_channels: Channels of the input file.
        output_channels: Channels written (2).
        subtype: Sample format written.
        seconds: Duration in seconds.
        process_seconds: Wall time of prediction + rendering + resampling, seconds.
        realtime_factor: ``seconds / process_seconds`` (> 1: faster than real time).
        notes: Everything changed on the way (resampling, channels, subtype, clipping).
        automation: The automation (plugin units).
        checkpoint_path: The checkpoint file used.
    """

    output_path: Path
    automation_path: Path | None
    plot_path: Path | None
    input_sample_rate: int
    model_sample_rate: float
    input_channels: int
    output_channels: int
    subtype: str
    seconds: float
    process_seconds: float
    realtime_factor: float
    notes: list[str]
    automation: Automation
    checkpoint_path: Path

    def summary(self) -> str:
        """Human-readable report for the command line."""
        lines = [
            f"input : {self.input_channels} ch, {self.input_sample_rate} Hz, {self.seconds:.2f} s",
            f"output: {self.output_path} ({self.output_channels} ch, {self.input_sample_rate} Hz, {self.subtype})",
        ]
        if self.automation_path:
            lines.append(f"automation: {self.automation_path} ({len(self.automation.times_s)} frames x "
                         f"{len(self.automation.table)} parameters, plugin units)")
        if self.plot_path:
            lines.append(f"plot: {self.plot_path}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"processed in {self.process_seconds:.2f} s ({self.realtime_factor:.3g}x real time)")
        return "\n".join(lines)


def process_file(checkpoint: str | Path, input_path: str | Path, output_path: str | Path,
                 automation_path: str | Path | None = None, plot_path: str | Path | None = None,
                 block_samples: int = 1024, smoothing_frames: int = 3, force: bool = False,
                 timeout_s: float = 120.0) -> ProcessResult:
    """Master one file (the ``deepafx process`` command).

    Args:
        checkpoint: Mastering checkpoint file or run folder.
        input_path: Audio file: any rate, 1 or 2 channels, any length.
        output_path: Mastered audio; format from the extension; the input's
            subtype when the format supports it (PCM 16/24/32, float), float
            otherwise. PCM outputs are clipped to full scale (counted in notes).
        automation_path: Optional ``.json`` or ``.csv`` automation: frame times
            in seconds and every parameter in its plugin's units.
        plot_path: Optional ``.png``: input/output log spectrograms and the
            most varying parameter curves (units on the axes).
        block_samples: Render block in samples at the model's rate (>= 1).
        smoothing_frames: Moving-average length over frames (>= 1; 1 = none).
        force: Overwrite existing outputs.
        timeout_s: Longest one render request may take, seconds.

    Returns:
        :class:`ProcessResult`.

    Raises:
        FileExistsError: an output exists and ``force`` is False (nothing written).
        FileNotFoundError: missing input or checkpoint.
        ValueError: unreadable/zero-length/NaN/silent input, too many channels,
            wrong extensions, a checkpoint of another recipe, bad settings.
        deepafx.workers.WorkerError: the chain crashed or hung.
    """
    from deepafx.recipes.mastering.plots import plot_process

    out = Path(output_path)
    auto_p = Path(automation_path) if automation_path else None
    plot_p = Path(plot_path) if plot_path else None
    if auto_p is not None and auto_p.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"--automation {auto_p} must end in .json or .csv")
    if plot_p is not None and plot_p.suffix.lower() != ".png":
        raise ValueError(f"--plot {plot_p} must end in .png")
    targets = [p for p in (out, auto_p, plot_p) if p is not None]
    if len({p.resolve() for p in targets}) != len(targets):
        raise ValueError(f"output, automation and plot paths must differ, got {[str(p) for p in targets]}")
    inp = Path(input_path)
    if inp.resolve() in {p.resolve() for p in (auto_p, plot_p) if p is not None}:
        raise ValueError(f"the automation/plot path must not be the input file {inp}")
    if not force:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(f"refusing to overwrite {', '.join(existing)}; pass --force to replace")
    _output_format(out, None)  # validates the extension before any work
    src = read_audio(inp)
    fmt, subtype, fmt_note = _output_format(out, src.subtype)
    model, ckpt, ckpt_path = load_mastering_checkpoint(checkpoint)
    mastered = master_audio(model, src.audio, src.sample_rate, block_samples=block_samples,
                            smoothing_frames=smoothing_frames, timeout_s=timeout_s)
    notes = list(mastered.notes)
    if fmt_note:
        notes.append(fmt_note)
    data, clipped = _encode_audio(mastered.audio, src.sample_rate, fmt, subtype)
    if clipped:
        notes.append(f"{clipped} sample(s) above full scale clipped for {subtype} output (write float, e.g. .wav from a "
                     "float input, to keep them)")
    outputs = [(out, data)]
    if auto_p is not None:
        extra = {
            "input": str(inp),
            "checkpoint": str(ckpt_path),
            "chain": model.chain.name,
            "model_sample_rate_hz": model.sample_rate,
            "frame_seconds": model.frame_samples / model.sample_rate,
            "smoothing_frames": int(smoothing_frames),
            "block_samples": int(block_samples),
        }
        outputs.append((auto_p, _automation_bytes(mastered.automation, auto_p, extra)))
    if plot_p is not None:
        title = f"{inp.name} mastered by {ckpt_path.parent.name}/{ckpt_path.name}"
        outputs.append((plot_p, _render_plot_png(plot_process, src.audio, mastered.audio, src.sample_rate,
                                                 mastered.automation, title=title)))
    _write_all_atomic(outputs)
    for n in notes:
        log.info("%s", n)
    return ProcessResult(
        output_path=out, automation_path=auto_p, plot_path=plot_p, input_sample_rate=src.sample_rate,
        model_sample_rate=model.sample_rate, input_channels=src.audio.shape[0],
        output_channels=mastered.audio.shape[0], subtype=subtype, seconds=mastered.seconds,
        process_seconds=mastered.process_seconds, realtime_factor=mastered.realtime_factor, notes=notes,
        automation=mastered.automation, checkpoint_path=ckpt_path,
    )
