"""``deepafx match`` for ``dexed_matching`` checkpoints: estimate a DX7 preset that sounds like a recording, through the real Dexed engine.

``deepafx match --checkpoint RUN_OR_CKPT IN.wav OUT_DIR`` loads a trained
``dexed_matching`` estimator, prepares the input (any rate, length and channel
count; every conversion is reported), predicts a preset, also looks up the
nearest training preset (and the voice classifier's voice), starts from whichever has the lowest
LSD to the input (the metric reported; ``preset.json`` lists every candidate's) and refines it with
test-time SPSA through Dexed (``--refine-renders``, 0 disables; the rendered
point with the lowest LSD is kept, :func:`~deepafx.recipes.dexed_matching.search.spsa_refine`). It writes:

* ``preset.syx`` — DX7 single-voice dump (163 bytes) for a DX7 or Dexed;
* ``preset_bank.syx`` — 32-voice bank with the voice in slot 1 (Dexed's
  cartridge manager, a DX7 cartridge);
* ``match.wav`` and ``target.wav`` — the re-rendered preset and the prepared target;
* ``comparison.png`` — log-mel spectrograms of target and match;
* ``preset.json`` — parameter values in DX7 units and the distances.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: Checkpoints tried, in order, when --checkpoint is a run folder.
PREFERRED_CHECKPOINTS = ("real", "synth", "ploss")
#: Inputs quieter than this peak (dBFS) are treated as silence.
SILENCE_PEAK_DB = -70.0
#: Noise-only input: median spectral flatness of the sounding frames above this
#: (white noise ≈ 0.56; sampled-instrument notes ≤ 0.01, measured on the recipe's
#: out-of-domain set).
NOISE_MIN_FLATNESS = 0.3
#: Least non-silent duration accepted, seconds.
MIN_DURATION_S = 0.25


class MatchInputError(ValueError):
    """The input audio cannot be matched (silence, noise only, too short); the message says why."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best one in a run folder (``real.pt`` > ``synth.pt`` > ``ploss.pt`` > ``last.pt``).

    Raises:
        FileNotFoundError: nothing usable (lists what was tried).
    """
    from deepafx.runs import resolve_checkpoint as resolve

    return resolve(path, prefer=PREFERRED_CHECKPOINTS)


def prepare_input(
    path: str | Path,
    sample_rate: float,
    num_channels: int,
    duration_seconds: float,
    reference_level_db: float,
    say=print,
) -> np.ndarray:
    """Read ``path`` and return ``(num_channels, samples)`` float32 at ``sample_rate`` Hz, ``duration_seconds`` long.

    Reading and the channel/rate conversion are :mod:`deepafx.audio`'s
    (:func:`~deepafx.audio.read_audio`, :func:`~deepafx.audio.conform`).
    Conversions (each reported through ``say``): channels averaged to mono
    (single-note models), resampling with soxr, leading-silence trim, cut or
    zero-pad to the model's duration, RMS level set to the training reference.

    Raises:
        FileNotFoundError: missing file.
        AudioError: (a ValueError) unreadable, truncated, empty or NaN/Inf file.
        MatchInputError: silent, too short, or with the wrong channel count.
    """
    from deepafx.audio import conform, read_audio

    p = Path(path)
    src = read_audio(p)
    for w in src.warnings:
        say(f"warning: {w}")
    audio = src.audio
    if num_channels != 1 and audio.shape[0] != num_channels:
        raise MatchInputError(
            f"this checkpoint was trained on {num_channels} notes as channels (multi-note input); "
            f"{p} has {audio.shape[0]} channel(s). Give a {num_channels}-channel file, one note per channel, "
            "or use a single-note checkpoint"
        )
    audio, conversions = conform(audio, src.sample_rate, sample_rate, num_channels, channel_mask=src.channel_mask)
    for note in conversions:
        say(note)
    peak = float(np.max(np.abs(audio)))
    if peak <= 10 ** (SILENCE_PEAK_DB / 20):
        raise MatchInputError(f"{p} is silent (peak {20 * np.log10(peak + 1e-12):.1f} dBFS); give a recording of one note")
    env = np.max(np.abs(audio), axis=0)
    loud = np.nonzero(env > peak * 10 ** (-40 / 20))[0]
    start, end = int(loud[0]), int(loud[-1]) + 1
    if (end - start) / sample_rate < MIN_DURATION_S:
        raise MatchInputError(
            f"{p} has only {(end - start) / sample_rate * 1000:.0f} ms of sound; give at least {MIN_DURATION_S * 1000:.0f} ms of one note"
        )
    if start > 0.01 * sample_rate:
        say(f"skipped {start / sample_rate:.2f} s of leading silence")
    audio = audio[:, start:]
    n = int(round(duration_seconds * sample_rate))
    if audio.shape[1] > n:
        say(f"cut to the first {duration_seconds:g} s (input lasts {audio.shape[1] / sample_rate:.2f} s after the onset)")
        audio = audio[:, :n]
    elif audio.shape[1] < n:
        say(f"zero-padded from {audio.shape[1] / sample_rate:.2f} s to {duration_seconds:g} s")
        audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    gain_db = reference_level_db - 20 * np.log10(rms + 1e-12)
    if abs(gain_db) > 0.5:
        say(f"level set to {reference_level_db:.1f} dBFS RMS (gain {gain_db:+.1f} dB), the level of the training sounds")
    return (audio * 10 ** (gain_db / 20)).astype(np.float32)


def estimate_pitch(audio: np.ndarray, sample_rate: float) -> tuple[int, float]:
    """MIDI pitch of a single note ``(channels, samples)`` by pYIN and its voiced fraction.

    Raises:
        MatchInputError: no pitched frames (noise-only input).
    """
    import librosa

    y = np.asarray(audio, dtype=np.float32).mean(axis=0)
    spec = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    energy = (spec**2).sum(axis=0)
    loud = energy > energy.max() * 1e-4  # frames within 40 dB of the loudest
    flatness = float(np.median(librosa.feature.spectral_flatness(S=spec)[0][loud]))
    f0, voiced, _ = librosa.pyin(y, fmin=50.0, fmax=2000.0, sr=sample_rate, frame_length=2048)
    frac = float(np.mean(voiced)) if len(voiced) else 0.0
    if flatness > NOISE_MIN_FLATNESS or not np.any(np.isfinite(f0[voiced])):
        raise MatchInputError(
            f"no pitched note found (median spectral flatness {flatness:.2f} over the sounding frames, "
            f"voiced in {frac * 100:.0f} % of frames): the input looks like noise only. "
            "Give a recording of one pitched note, or pass --pitch MIDI"
        )
    midi = float(np.median(librosa.hz_to_midi(f0[voiced])))
    return int(round(midi)), frac


def spectrogram_png(target: np.ndarray, match: np.ndarray, sample_rate: float, path: Path, title: str) -> Path:
    """Save log-mel spectrograms of ``target`` and ``match`` ``(channels, samples)`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepafx.recipes.dexed_matching.spectral import LogMelFeatures

    feat = LogMelFeatures(sample_rate, n_mels=128, floor_db=-100.0)
    frames = feat.mel.num_frames(target.shape[-1])
    specs = [feat(a[None]).reshape(a.shape[0], 128, frames)[0] for a in (target, match)]
    vmax = max(float(s.max()) for s in specs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    dur = target.shape[-1] / sample_rate
    for ax, s, name in zip(axes, specs, ("target", "match (Dexed)")):
        im = ax.imshow(s, origin="lower", aspect="auto", extent=(0, dur, 0, 128), vmin=vmax - 80, vmax=vmax, cmap="magma")
        ax.set_title(name)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("mel band")
    fig.colorbar(im, ax=axes, label="dB")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    """``deepafx match``; errors are raised and printed in one line by :func:`deepafx.cli.main`."""
    import torch

    from deepafx.audio import encode_audio, write_files_atomic
    from deepafx.recipes.dexed_matching.model import predict, predict_voice
    from deepafx.recipes.dexed_matching.presets import set_transpose, write_bank, write_single_voice
    from deepafx.recipes.dexed_matching.search import RetrievalIndex, spsa_refine
    from deepafx.recipes.dexed_matching.spectral import SpectralTarget
    from deepafx.recipes.dexed_matching.train import load_estimator
    from deepafx.hosts.dexed_host import DexedRenderer, dexed_param_table
    from deepafx.metrics import lsd_db

    if args.refine_renders < 0:
        raise ValueError(f"--refine-renders must be >= 0 (0 disables refinement), got {args.refine_renders}")
    t0 = time.perf_counter()
    ckpt_path = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_estimator(ckpt_path)
    d = ckpt["data"]
    sr, notes = float(d["sample_rate"]), [tuple(n) for n in d["notes"]]
    print(f"checkpoint {ckpt_path} ({ckpt['stage']} model, {len(notes)} note(s), {sr:g} Hz)")
    target = prepare_input(args.input, sr, len(notes), float(d["duration_s"]), float(d["reference_level_db"]))
    if d.get("multi_note"):
        pitch = 60
    elif args.pitch is not None:
        pitch = int(args.pitch)
    else:
        pitch, frac = estimate_pitch(target, sr)
        print(f"estimated pitch: MIDI {pitch} (voiced in {frac * 100:.0f} % of frames)")
    if not 36 <= pitch <= 84:
        clipped = int(np.clip(pitch, 36, 84))
        print(f"pitch {pitch} is outside the DX7 transpose range 36..84; using {clipped}")
        pitch = clipped
    renderer = DexedRenderer(sr, notes, float(d["note_duration_s"]), float(d["duration_s"]))
    objective = SpectralTarget(target)
    x_net = predict(model, target[None], np.array([pitch]))[0]
    candidates = {"network": x_net}
    if model.num_voices and ckpt.get("voice_x") is not None:  # the voice classifier's choice
        candidates["voice"] = predict_voice(model, np.asarray(ckpt["voice_x"]), target[None], np.array([pitch]))[0]
    if ckpt.get("retrieval_x") is not None and not args.no_retrieval:
        index = RetrievalIndex(np.asarray(ckpt["retrieval_x"], dtype=np.float64), renderer)
        candidates["retrieval"] = index.retrieve(target, pitch)
    # the start is the candidate with the lowest LSD, the metric reported (and the one refinement keeps by)
    renders = {k: renderer.render(x) for k, x in candidates.items()}
    start_lsd = {k: float(lsd_db(r, target)) for k, r in renders.items()}
    start_mss = {k: float(objective(r)[0]) for k, r in renders.items()}
    start = min(start_lsd, key=start_lsd.get)
    print("start points (LSD dB / multi-scale spectral loss): "
          + ", ".join(f"{k} {start_lsd[k]:.2f} / {start_mss[k]:.3f}" for k in candidates) + f" -> {start}")
    x = candidates[start]
    if args.refine_renders > 0:
        torch.set_num_threads(1)
        res = spsa_refine(target, x, renderer, args.refine_renders, args.learning_rate, objective=objective, seed=args.seed)
        print(f"refined with {res.renders} Dexed renders in {res.seconds:.1f} s: {res.metric.upper()} "
              f"{res.start_loss:.3f} -> {res.loss:.3f} (the point kept is the best by {res.metric.upper()})")
        x = res.x
    x = set_transpose(x, pitch - 60)
    match = renderer.render(x)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = (args.name or Path(args.input).stem).upper()[:10]
    write_single_voice(out / "preset.syx", x, name)
    write_bank(out / "preset_bank.syx", [(name, x)])
    lsd = lsd_db(match, target)
    mss = float(objective(match)[0])
    spectrogram_png(target, match, sr, out / "comparison.png", f"{Path(args.input).name}: LSD {lsd:.1f} dB")
    table = dexed_param_table()
    values = table.denormalize(x)
    info = {
        "input": str(args.input),
        "checkpoint": str(ckpt_path),
        "pitch_midi": pitch,
        "start": start,
        "start_lsd_db": start_lsd,
        "start_mss": start_mss,
        "refine_renders": args.refine_renders,
        "lsd_db": lsd,
        "mss": mss,
        "seconds": time.perf_counter() - t0,
        "parameters": {p.name: (int(round(v)) if p.is_discrete or p.max == 99 else float(v)) for p, v in zip(table, values)},
    }
    write_files_atomic([
        (out / "match.wav", encode_audio(match, sr, "WAV", "FLOAT")[0]),
        (out / "target.wav", encode_audio(target, sr, "WAV", "FLOAT")[0]),
        (out / "preset.json", json.dumps(info, indent=2).encode()),
    ])
    print(f"LSD {lsd:.2f} dB, multi-scale spectral loss {mss:.3f}; algorithm {int(values[table.index('algorithm')])}")
    print(f"wrote {out / 'preset.syx'} (single voice), {out / 'preset_bank.syx'} (bank), match.wav, target.wav, comparison.png, preset.json")
    return 0
