"""Process a file with a trained automation model: predict per-frame parameters, render the chain, write the results.

The pipeline behind ``deepafx process`` (DeepAFx inference, Ramírez et al.,
ICASSP 2021, https://arxiv.org/abs/2010.04237): the encoder predicts one
normalized parameter vector per frame (``frame_seconds`` hop, context window
centred on the frame), the per-frame curves are low-pass smoothed (centred
moving average of ``smoothing_frames`` frames), and the chain renders the track
in small blocks whose parameters are interpolated from the curves
(:func:`deepafx.automation.model.predict_automation`,
:func:`deepafx.automation.model.render_automation`).

Input handling (reading and conversion are :mod:`deepafx.audio`'s), stated in
:attr:`ProcessedAudio.notes` and by the command:

* **Sample rate**: any. Audio at another rate than the model's is resampled
  with soxr (very high quality) to the model's rate, processed, and resampled
  back, so the output has the input's rate and exactly its number of samples.
* **Channels**: the output has the channel count the model and its chain were
  trained on (``model.channels``: 2 for mastering, 1 for a mono instrument):
  mono is duplicated, six channels are downmixed as 5.1 with the ITU-R BS.775
  coefficients, other counts are averaged (:func:`deepafx.audio.downmix`).
* **Length**: any non-zero length (frames are zero-padded at the end).
* **Silence** (sample peak at or below :data:`deepafx.audio.SILENCE_DBFS`) is
  processed with a warning (:attr:`ProcessedAudio.warnings`): an album with a
  silent track still masters. Digital silence gives digital silence through
  the built-in chain; whatever the chain gives, a non-finite output is an error.
* **Refused**: missing, unreadable or truncated files, zero-length audio,
  NaN/Inf samples, and checkpoints without an automation model. Nothing is written then.

Writing is atomic (:func:`deepafx.audio.write_files_atomic`): every output goes
to a temporary file in its destination folder, and only when all of them are
complete are they renamed over their final names; an existing output is refused
unless ``force=True``, and stays byte-identical when a run fails. New files get
the permissions the umask gives.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from deepafx.audio import (check_audio, conform, encode_audio, output_format, peak_dbfs, read_audio, resample,
                           silence_warning, write_files_atomic)
from deepafx.hosts.base import PluginError
from deepafx.params import ParamTable

log = logging.getLogger(__name__)

#: :meth:`Automation.saturation_share`: a parameter within this distance of 0 or 1 (normalized) is saturated …
SATURATION_TOLERANCE = 0.01
#: … and a frame counts when at least this share of its parameters is.
SATURATION_FRACTION = 0.5

__all__ = [
    "Automation",
    "ProcessedAudio",
    "ProcessResult",
    "load_automation_checkpoint",
    "apply_automation",
    "check_loudness_target",
    "loudness_parameter",
    "match_loudness",
    "process_file",
    "resolve_checkpoint_path",
]

_CHECKPOINT_KEYS = ("config", "chain", "num_params", "model")


# --------------------------------------------------------------------------- checkpoint
def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (``checkpoints/best.pt`` preferred, else ``last.pt``).

    See :func:`deepafx.runs.resolve_checkpoint`, the resolver every command uses.

    Raises:
        FileNotFoundError: nothing usable there (the tried names are listed).
    """
    from deepafx.runs import resolve_checkpoint

    return resolve_checkpoint(path, prefer="best")


def _checkpoint_recipe(ckpt: Mapping[str, Any]) -> str | None:
    recipe = ckpt.get("recipe")
    if recipe is None and isinstance(ckpt.get("config"), Mapping):
        recipe = ckpt["config"].get("recipe")
    return recipe


def load_automation_checkpoint(path: str | Path, recipe: str | None = None):
    """Load a checkpoint of an automation recipe and rebuild its model (eval mode, CPU).

    Args:
        path: Checkpoint file or run folder (see :func:`resolve_checkpoint_path`).
        recipe: Recipe the checkpoint must come from (``None``: any recipe whose
            checkpoints hold an automation model).

    Returns:
        ``(model, checkpoint_dict, checkpoint_path)``: the
        :class:`~deepafx.automation.model.AutomationModel`, the raw dict and the
        file it came from.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the file is not a readable checkpoint, a checkpoint of
            another recipe, or one lacking the keys ``config``, ``chain``,
            ``num_params``, ``model``.
    """
    from deepafx.automation.model import model_from_checkpoint
    from deepafx.runs import load_checkpoint

    p = resolve_checkpoint_path(path)
    try:
        ckpt = load_checkpoint(p)
    except RuntimeError as exc:  # a damaged or foreign file: the user's to fix
        raise ValueError(str(exc)) from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{p} is not a deepafx checkpoint (got a {type(ckpt).__name__}, expected a dict)")
    found = _checkpoint_recipe(ckpt)
    if recipe is not None and found != recipe:
        raise ValueError(
            f"{p} is a checkpoint of recipe {found!r}, not {recipe!r}; train one with "
            f"`deepafx train --config {recipe}/quick`"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{p} lacks checkpoint key(s) {missing}; it was not written by an automation recipe's trainer")
    try:
        model = model_from_checkpoint(ckpt)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: the model weights do not match the model settings stored with them: {exc}") from exc
    return model, ckpt, p


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

    def saturation_share(self, tolerance: float = SATURATION_TOLERANCE, fraction: float = SATURATION_FRACTION) -> float:
        """Share of frames, on [0, 1], where at least ``fraction`` of the parameters sit near a range bound.

        A parameter is *saturated* in a frame when its normalized value is within
        ``tolerance`` of 0 or 1 (1 % of its range by default). An encoder whose
        outputs are pinned at the bounds (the sigmoid saturated) keeps its
        automation constant there whatever it hears; this share makes that visible.

        Args:
            tolerance: Distance to a bound on the normalized [0, 1] scale.
            fraction: Share of parameters that must be saturated for a frame to count, (0, 1].

        Raises:
            ValueError: ``tolerance`` outside [0, 0.5) or ``fraction`` outside (0, 1].
        """
        if not 0.0 <= tolerance < 0.5 or not 0.0 < fraction <= 1.0:
            raise ValueError(f"need 0 <= tolerance < 0.5 and 0 < fraction <= 1, got {tolerance}, {fraction}")
        near = (self.normalized <= tolerance) | (self.normalized >= 1.0 - tolerance)
        if near.size == 0:
            return 0.0
        return float(np.mean(near.mean(axis=1) >= fraction))

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
        out.setdefault("saturation_share", self.saturation_share())
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
class ProcessedAudio:
    """Output of :func:`apply_automation`.

    Attributes:
        audio: ``(channels, samples)`` float32 at the input's rate, as many samples as the input.
        sample_rate: Hz (the input's).
        automation: The predicted parameter automation.
        notes: What was changed to fit the model (resampling, channels).
        predict_seconds: Wall time of the encoder, seconds.
        render_seconds: Wall time of rendering (worker start included), seconds.
        resample_seconds: Wall time of resampling both ways, seconds.
        warnings: Doubts about the input that did not stop processing (silence).
        loudness: With a loudness target, what :func:`match_loudness` did (``None`` without one).
    """

    audio: np.ndarray
    sample_rate: float
    automation: Automation
    notes: list[str]
    predict_seconds: float
    render_seconds: float
    resample_seconds: float
    warnings: list[str] = field(default_factory=list)
    loudness: dict[str, Any] | None = None

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


# --------------------------------------------------------------------------- loudness target
def check_loudness_target(target_lufs: float, what: str = "loudness target") -> float:
    """``target_lufs`` as a float, or ValueError unless it is a finite LUFS value below 0."""
    value = float(target_lufs)
    if not (np.isfinite(value) and value < 0):
        raise ValueError(f"{what} must be a finite LUFS value below 0 (e.g. -14), got {target_lufs}")
    return value


def loudness_parameter(table: ParamTable, name: str | None = None) -> int:
    """Index of the parameter :func:`match_loudness` offsets: a continuous parameter in dB.

    Args:
        table: The chain's learned parameters.
        name: Its full name (``"gain.gain_db"``); ``None``: the one learned
            parameter named ``gain_db`` after its processor's name.

    Raises:
        ValueError: no such parameter, several candidates, or one that is
            discrete or not in dB (the candidates are listed).
    """
    names = table.names
    if name is None:
        found = [i for i, n in enumerate(names) if n.rsplit(".", 1)[-1] == "gain_db"]
        if len(found) != 1:
            db = [n for n, p in zip(names, table) if p.unit == "dB" and not p.is_discrete]
            raise ValueError(f"a loudness target needs one output-gain parameter; found {len(found)} learned parameters "
                             f"named '<processor>.gain_db' in this chain. Name it (loudness_param / --loudness-param), "
                             f"one of the dB parameters: {db}")
        i = found[0]
    else:
        if name not in names:
            raise ValueError(f"loudness parameter {name!r} is not a learned parameter of this chain; choose from {names}")
        i = names.index(name)
    p = table[i]
    if p.is_discrete or p.unit != "dB":
        raise ValueError(f"loudness parameter {names[i]!r} must be continuous and in dB, got unit {p.unit!r}"
                         f"{' (discrete)' if p.is_discrete else ''}")
    return i


def match_loudness(render: Callable[[np.ndarray], np.ndarray], params: np.ndarray, table: ParamTable,
                   target_lufs: float, sample_rate: float, param: str | None = None, tolerance_lu: float = 0.1,
                   max_renders: int = 4, output: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Offset one dB parameter's whole automation so that the output meets an integrated-loudness target.

    What a mastering engineer does last: set the output gain so the master
    measures, e.g., −14 LUFS (ITU-R BS.1770-4 integrated loudness, the level
    streaming services normalise to). Every frame of the parameter (in dB, the
    plugin's units) moves by the same offset ``d``, clipped to its range, so the
    automation keeps its shape and stays a preset for the same plugins. ``d``
    is found by the secant method on ``f(d) = lufs(render(d)) − target`` from
    ``d = target − lufs(output)`` (the step a linear chain would need; a
    limiter after the gain makes ``f`` flatter, which the secant steps follow),
    stopping within ``tolerance_lu`` or after ``max_renders`` renders; the
    closest render is kept.

    Args:
        render: Renders the track for normalized automation ``(frames, P)``,
            returning ``(channels, samples)`` at ``sample_rate``.
        params: The automation ``(frames, P)``, normalized on [0, 1].
        table: The chain's learned parameters (``P`` of them).
        target_lufs: Integrated loudness to reach, LUFS (finite, below 0).
        sample_rate: Rate of the rendered audio, Hz.
        param: Parameter to offset (:func:`loudness_parameter`; ``None``: the
            chain's ``<processor>.gain_db``).
        tolerance_lu: Stop when within this many LU (> 0).
        max_renders: Renders at most, besides ``output`` (>= 1).
        output: The render of ``params`` if already made (saves one render).

    Returns:
        ``(params, audio, info)``: the automation with the offset applied, its
        render, and ``{"param", "target_lufs", "offset_db", "lufs_before",
        "lufs", "renders", "reached", "limited"}`` (``limited``: the offset hit
        the parameter's range on every frame, so the target may be out of
        reach; ``reached``: within ``tolerance_lu``). A silent output (below the
        −70 LUFS gate) is returned unchanged with ``reached`` false and the
        loudness entries ``None``.

    Raises:
        ValueError: a bad target, tolerance or render count, a parameter that
            cannot set loudness (:func:`loudness_parameter`), or params not
            ``(frames, P)``.
    """
    from deepafx.metrics import lufs

    target = check_loudness_target(target_lufs)
    if not float(tolerance_lu) > 0:
        raise ValueError(f"loudness tolerance must be > 0 LU, got {tolerance_lu}")
    if int(max_renders) < 1:
        raise ValueError(f"max_renders must be >= 1, got {max_renders}")
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != len(table):
        raise ValueError(f"params must be (frames, {len(table)}), got shape {params.shape}")
    j = loudness_parameter(table, param)
    p = table[j]
    base_db = p.from_normalized(params[:, j])

    def with_offset(d: float) -> np.ndarray:
        out = params.copy()
        out[:, j] = p.to_normalized(np.clip(base_db + d, p.min, p.max))
        return out

    y = render(params) if output is None else output
    renders = 0 if output is not None else 1
    first = lufs(y, sample_rate)
    info: dict[str, Any] = {"param": table.names[j], "target_lufs": target, "offset_db": 0.0, "lufs_before": None,
                            "lufs": None, "renders": renders, "reached": False, "limited": False}
    if not np.isfinite(first):  # silent: nothing to scale (None, not -inf, so that the info stays valid JSON)
        return params, y, info
    best = (abs(first - target), 0.0, params, y, first)
    tried = [(0.0, first)]
    d = target - first
    while abs(best[4] - target) > tolerance_lu and renders < int(max_renders):
        cand = with_offset(d)
        y_d = render(cand)
        renders += 1
        level = lufs(y_d, sample_rate)
        tried.append((d, level))
        if np.isfinite(level) and abs(level - target) < best[0]:
            best = (abs(level - target), d, cand, y_d, level)
        (d0, l0), (d1, l1) = tried[-2], tried[-1]
        slope = (l1 - l0) / (d1 - d0) if d1 != d0 and np.isfinite(l1) and np.isfinite(l0) else 0.0
        step = (target - l1) / slope if slope > 0.05 else (target - l1)  # flat or inverted: a plain step
        nxt = float(np.clip(d1 + step, p.min - base_db.max(), p.max - base_db.min()))
        if any(abs(nxt - dd) < 1e-3 for dd, _ in tried):
            break  # clipped to the range: nothing new to try
        d = nxt
    _, d_best, params_best, y_best, level_best = best
    info.update(offset_db=float(d_best), lufs_before=float(first), lufs=float(level_best), renders=renders,
                reached=bool(abs(level_best - target) <= tolerance_lu),
                limited=bool(np.all((base_db + d_best >= p.max) | (base_db + d_best <= p.min))))
    return params_best, y_best, info


def apply_automation(model, audio: np.ndarray, sample_rate: float, block_samples: int = 1024,
                 smoothing_frames: int = 3, batch_size: int = 16, timeout_seconds: float = 120.0,
                 channel_mask: int | None = None, what: str = "input", loudness_lufs: float | None = None,
                 loudness_param: str | None = None, static: bool = False) -> ProcessedAudio:
    """Process ``audio`` with ``model``: predict the automation and render the chain.

    Args:
        model: A :class:`~deepafx.automation.model.AutomationModel` in eval mode.
        audio: ``(channels, samples)`` float32, any channel count (converted to
            ``model.channels`` by :func:`deepafx.audio.downmix`), any length >= 1.
        sample_rate: Rate of ``audio`` in Hz (any; resampled with soxr when it
            differs from ``model.sample_rate``).
        block_samples: Render block in samples at the model's rate; each block
            uses the parameters interpolated at its centre time (>= 1).
        smoothing_frames: Centred moving average over frames (1 = no smoothing).
        batch_size: Context windows per encoder call.
        timeout_seconds: Longest one render request may take, seconds.
        channel_mask: Speaker mask of the input file, if known (see
            :func:`deepafx.audio.downmix`).
        what: Name of the input in messages (a file path).
        loudness_lufs: Optional integrated-loudness target in LUFS (e.g. −14):
            the automation's output-gain parameter is offset until the output
            meets it (:func:`match_loudness`, a few more renders; stated in the
            notes). ``None``: the model's automation as predicted.
        loudness_param: The parameter that offset moves (default: the chain's
            ``<processor>.gain_db``).
        static: One parameter set for the whole track, the encoder's mean outputs with the gain
            from the track's loudness (:func:`~deepafx.automation.model.predict_automation`): a
            preset, not automation.

    Returns:
        :class:`ProcessedAudio`: ``model.channels`` output at ``sample_rate`` with as many
        samples as the input. The chain's state runs continuously through the
        whole track (one instance, reset at the start); its latency (0 for the
        built-in chain) is not compensated, so the output is as the chain
        renders it.

    Raises:
        ValueError: bad settings, zero-length audio or NaN/Inf samples
            (:class:`~deepafx.hosts.base.AudioError`).
        deepafx.hosts.base.PluginError: the chain rendered NaN/Inf samples.
        deepafx.workers.WorkerError: the chain crashed or hung in its worker.
    """
    from deepafx.automation.model import predict_automation, render_automation

    if int(block_samples) < 1:
        raise ValueError(f"block_samples must be >= 1 sample, got {block_samples}")
    if int(smoothing_frames) < 1:
        raise ValueError(f"smoothing_frames must be >= 1 frame, got {smoothing_frames}")
    if loudness_lufs is not None:  # bad targets and parameters fail before any work
        check_loudness_target(loudness_lufs)
        loudness_parameter(model.chain.param_table, loudness_param)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    check_audio(audio, sample_rate, what=what)
    warnings = []
    silent = silence_warning(audio, what)
    n_in = audio.shape[1]
    t0 = time.perf_counter()
    x, notes = conform(audio, sample_rate, sample_rate, model.channels, channel_mask=channel_mask)
    if notes and audio.shape[0] == 1:
        notes[0] += f" (the model processes {model.channels} channels): the output has {model.channels}"
    if float(sample_rate) != float(model.sample_rate):
        x = resample(x, sample_rate, model.sample_rate)
        notes.append(f"resampled from {sample_rate:g} Hz to {model.sample_rate:g} Hz for the model and back to "
                     f"{sample_rate:g} Hz for the output (soxr, very high quality)")
    t_resample = time.perf_counter() - t0
    t0 = time.perf_counter()
    times_s, params = predict_automation(model, x, batch_size=batch_size, smoothing_frames=int(smoothing_frames),
                                         static=bool(static))
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = render_automation(model.chain, x, times_s, params, block_samples=int(block_samples), timeout_seconds=timeout_seconds)
    loudness = None
    if loudness_lufs is not None:
        params, y, loudness = match_loudness(
            lambda prm: render_automation(model.chain, x, times_s, prm, block_samples=int(block_samples),
                                          timeout_seconds=timeout_seconds),
            params, model.chain.param_table, loudness_lufs, model.sample_rate, param=loudness_param, output=y)
        notes.append(_loudness_note(loudness))
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = resample(y, model.sample_rate, sample_rate)
    if y.shape[1] >= n_in:
        y = y[:, :n_in]
    else:  # soxr may return a sample or two fewer
        y = np.concatenate([y, np.zeros((y.shape[0], n_in - y.shape[1]), np.float32)], axis=1)
    t_resample += time.perf_counter() - t0
    bad = int(np.count_nonzero(~np.isfinite(y)))
    if bad:
        raise PluginError(f"the chain {model.chain.name!r} rendered {bad} NaN/Inf sample(s) from {what}; "
                          "nothing written")
    if silent:
        out_level = peak_dbfs(y)
        out_desc = "silent too" if out_level == -np.inf else f"peaks at {out_level:.1f} dBFS"
        warnings.append(f"{silent}: processed anyway; the output is {out_desc}")
    table = model.chain.param_table
    auto = Automation(times_s, params, table)
    return ProcessedAudio(np.ascontiguousarray(y), float(sample_rate), auto, notes, t_predict, t_render, t_resample,
                         warnings, loudness)


def _loudness_note(info: Mapping[str, Any]) -> str:
    """One sentence on what :func:`match_loudness` did."""
    if info["lufs_before"] is None:
        return (f"loudness target {info['target_lufs']:g} LUFS not applied: the output is below the -70 LUFS gate "
                "(silent)")
    text = (f"loudness target {info['target_lufs']:g} LUFS: {info['param']} offset by {info['offset_db']:+.2f} dB on "
            f"every frame, output {info['lufs_before']:.2f} -> {info['lufs']:.2f} LUFS ({info['renders']} more "
            "render(s))")
    if not info["reached"]:
        text += (" - not reached" + (": the parameter's range is exhausted" if info["limited"] else
                                     " within the render budget (the chain's dynamics, e.g. a limiter, cap it)"))
    return text


# --------------------------------------------------------------------------- writing
def _render_plot_png(plot_fn: Callable[..., Any], *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    plot_fn(buf, *args, **kwargs)
    return buf.getvalue()


@dataclass
class ProcessResult:
    """What :func:`process_file` did.

    Attributes:
        output_path: Processed audio file.
        automation_path: Automation file, or None.
        plot_path: PNG figure, or None.
        input_sample_rate: Hz.
        model_sample_rate: Hz.
        input_channels: Channels of the input file.
        output_channels: Channels written (the model's).
        subtype: Sample format written.
        seconds: Duration in seconds.
        process_seconds: Wall time of prediction + rendering + resampling, seconds.
        realtime_factor: ``seconds / process_seconds`` (> 1: faster than real time).
        notes: Everything changed on the way (resampling, channels, subtype, clipping).
        automation: The automation (plugin units).
        checkpoint_path: The checkpoint file used.
        warnings: Doubts about the input that did not stop processing (silence,
            a possibly truncated MP3/Ogg); the command prints them to stderr.
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
    warnings: list[str] = field(default_factory=list)
    preset_paths: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable report for the command line."""
        lines = [
            f"input : {self.input_channels} ch, {self.input_sample_rate} Hz, {self.seconds:.2f} s",
            f"output: {self.output_path} ({self.output_channels} ch, {self.input_sample_rate} Hz, {self.subtype})",
        ]
        if self.automation_path:
            lines.append(f"automation: {self.automation_path} ({len(self.automation.times_s)} frames x "
                         f"{len(self.automation.table)} parameters, plugin units)")
        lines.append(f"saturation: {100 * self.automation.saturation_share():.1f} % of frames have at least half "
                     f"of the parameters within {100 * SATURATION_TOLERANCE:g} % of a range bound")
        if self.plot_path:
            lines.append(f"plot: {self.plot_path}")
        for path in self.preset_paths:
            lines.append(f"LV2 preset: {path.parent} (copy the folder to ~/.lv2 to load it in the plugin)")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"processed in {self.process_seconds:.2f} s ({self.realtime_factor:.3g}x real time)")
        return "\n".join(lines)


def process_file(checkpoint: str | Path, input_path: str | Path, output_path: str | Path,
                 automation_path: str | Path | None = None, plot_path: str | Path | None = None,
                 block_samples: int = 1024, smoothing_frames: int = 3, force: bool = False,
                 timeout_seconds: float = 120.0, recipe: str | None = None, loudness_lufs: float | None = None,
                 loudness_param: str | None = None, static: bool = False,
                 lv2_preset_dir: str | Path | None = None) -> ProcessResult:
    """Process one file (the ``deepafx process`` command of automation recipes).

    Args:
        checkpoint: Checkpoint file or run folder of an automation recipe.
        input_path: Audio file: any rate, any channel count (see
            :func:`deepafx.audio.downmix`), any length.
        output_path: Processed audio; format from the extension; the input's
            subtype when the format supports it (PCM 16/24/32, float), float
            otherwise. PCM outputs are clipped to full scale (counted in notes).
        automation_path: Optional ``.json`` or ``.csv`` automation: frame times
            in seconds and every parameter in its plugin's units.
        plot_path: Optional ``.png``: input/output log spectrograms and the
            most varying parameter curves (units on the axes).
        block_samples: Render block in samples at the model's rate (>= 1).
        smoothing_frames: Moving-average length over frames (>= 1; 1 = none).
        force: Overwrite existing outputs.
        timeout_seconds: Longest one render request may take, seconds.
        recipe: Recipe the checkpoint must come from (``None``: any automation recipe).
        loudness_lufs: Optional integrated-loudness target of the output, LUFS
            (:func:`apply_automation`; recorded in the automation file).
        loudness_param: The dB parameter offset for it (default: ``<processor>.gain_db``).
        static: One parameter set for the whole file instead of automation (:func:`apply_automation`).
        lv2_preset_dir: With ``static``: also write that parameter set as one LV2 preset bundle per
            LV2 stage in this folder (:mod:`deepafx.presets`), named after the input file.

    Returns:
        :class:`ProcessResult`.

    Raises:
        FileExistsError: an output exists and ``force`` is False (nothing written).
        FileNotFoundError: missing input or checkpoint.
        ValueError: unreadable, truncated, zero-length or NaN/Inf input
            (:class:`~deepafx.hosts.base.AudioError`), wrong extensions, an
            unreadable checkpoint or one of another recipe, bad settings.
        deepafx.hosts.base.PluginError: the chain rendered NaN/Inf.
        deepafx.workers.WorkerError: the chain crashed or hung.
    """
    from deepafx.automation.plots import plot_process

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
    if lv2_preset_dir is not None and not static:
        raise ValueError("an LV2 preset holds one parameter set: add --static (one set for the whole file)")
    output_format(out)  # validates the extension before any work
    src = read_audio(inp)
    fmt, subtype, fmt_note = output_format(out, src.subtype)
    model, ckpt, ckpt_path = load_automation_checkpoint(checkpoint, recipe)
    processed = apply_automation(model, src.audio, src.sample_rate, block_samples=block_samples,
                            smoothing_frames=smoothing_frames, timeout_seconds=timeout_seconds, channel_mask=src.channel_mask,
                            what=str(inp), loudness_lufs=loudness_lufs, loudness_param=loudness_param,
                            static=static)
    notes = list(processed.notes)
    if fmt_note:
        notes.append(fmt_note)
    data, clipped = encode_audio(processed.audio, src.sample_rate, fmt, subtype)
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
            "static": bool(static),
            "block_samples": int(block_samples),
        }
        if processed.loudness is not None:
            extra["loudness"] = processed.loudness
        outputs.append((auto_p, _automation_bytes(processed.automation, auto_p, extra)))
    if plot_p is not None:
        title = f"{inp.name} processed by {ckpt_path.parent.name}/{ckpt_path.name}"
        outputs.append((plot_p, _render_plot_png(plot_process, src.audio, processed.audio, src.sample_rate,
                                                 processed.automation, title=title)))
    preset_paths: list[Path] = []
    if lv2_preset_dir is not None:
        from deepafx.presets import lv2_preset_files

        files, skipped = lv2_preset_files(model.chain, processed.automation.normalized[0], lv2_preset_dir, inp.stem)
        existing = [str(p) for p, _ in files if p.exists()]
        if existing and not force:
            raise FileExistsError(f"refusing to overwrite {', '.join(existing)}; pass --force to replace")
        outputs += files
        notes += skipped
        preset_paths = [p for p, _ in files if p.name != "manifest.ttl"]
    write_files_atomic(outputs)
    warnings = src.warnings + processed.warnings
    for n in notes:
        log.info("%s", n)
    return ProcessResult(
        output_path=out, automation_path=auto_p, plot_path=plot_p, input_sample_rate=src.sample_rate,
        model_sample_rate=model.sample_rate, input_channels=src.audio.shape[0],
        output_channels=processed.audio.shape[0], subtype=subtype, seconds=processed.seconds,
        process_seconds=processed.process_seconds, realtime_factor=processed.realtime_factor, notes=notes,
        automation=processed.automation, checkpoint_path=ckpt_path, warnings=warnings, preset_paths=preset_paths,
    )
