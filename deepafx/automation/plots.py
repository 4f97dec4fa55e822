"""Figures of the mastering recipe (matplotlib, Agg backend: no display needed).

* :func:`plot_process` — input and output log spectrograms over the same
  time axis and level scale, and the most varying parameter curves, each in
  its plugin's units (``deepafx process --plot``).
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np

__all__ = ["plot_process", "log_spectrogram_db"]


def log_spectrogram_db(audio: np.ndarray, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Magnitude spectrogram of the channel average in dB (re full-scale amplitude 1.0).

    Args:
        audio: ``(channels, samples)`` or ``(samples,)``.
        n_fft: FFT size in samples (Hann window).
        hop_length: Hop in samples.

    Returns:
        ``(n_fft // 2 + 1, frames)`` float, ``20 log10(|STFT| / (n_fft / 2))``
        floored at −140 dB (a full-scale sine reads about 0 dB).
    """
    import librosa

    mono = np.asarray(audio, dtype=np.float32).reshape(-1, np.shape(audio)[-1]).mean(0)
    if len(mono) < n_fft:
        mono = np.pad(mono, (0, n_fft - len(mono)))
    mag = np.abs(librosa.stft(mono, n_fft=n_fft, hop_length=hop_length, window="hann", center=True))
    return 20.0 * np.log10(np.maximum(mag / (n_fft / 2.0), 1e-7))


def _display_grid(spec_db: np.ndarray, freqs: np.ndarray, edges_hz: np.ndarray, max_columns: int) -> np.ndarray:
    """Resample a ``(bins, frames)`` dB spectrogram to ``len(edges_hz) - 1`` log-spaced rows and at most
    ``max_columns`` columns (maximum over the merged frames, so short events stay visible)."""
    frames = spec_db.shape[1]
    if frames > max_columns:
        group = int(np.ceil(frames / max_columns))
        pad = group * int(np.ceil(frames / group)) - frames
        spec_db = np.pad(spec_db, ((0, 0), (0, pad)), mode="edge")
        spec_db = spec_db.reshape(spec_db.shape[0], -1, group).max(axis=2)
    centres = np.sqrt(edges_hz[:-1] * edges_hz[1:])
    return np.stack([np.interp(centres, freqs, col) for col in spec_db.T], axis=1)


def plot_process(
    dest: str | IO[bytes],
    input_audio: np.ndarray,
    output_audio: np.ndarray,
    sample_rate: float,
    automation: Any,
    num_curves: int = 6,
    title: str = "",
    dpi: int = 100,
) -> None:
    """Save a PNG: input/output log spectrograms and the ``num_curves`` most varying parameters.

    Spectrograms share the time axis, a log-frequency axis (Hz) and a common
    colour scale in dB (the top 90 dB below the louder of the two maxima).
    Parameter curves are drawn in the plugin's units, one panel each, labelled
    ``name [unit]`` with the parameter's range on the y axis; the choice is by
    standard deviation of the normalized curve (ties keep table order).

    Args:
        dest: File path or binary file object.
        input_audio: ``(channels, samples)`` at ``sample_rate``.
        output_audio: ``(channels, samples)`` at ``sample_rate``.
        sample_rate: Hz.
        automation: :class:`deepafx.automation.process.Automation`.
        num_curves: Parameter panels (>= 1; fewer when the chain has fewer).
        title: Figure title.
        dpi: Resolution in dots per inch; the figure is 12 x (6 + 1.6·rows) inches,
            rows = ceil(num_curves / 2).

    Raises:
        ValueError: ``num_curves < 1``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if num_curves < 1:
        raise ValueError(f"num_curves must be >= 1, got {num_curves}")
    hop = 512
    s_in = log_spectrogram_db(input_audio, hop_length=hop)
    s_out = log_spectrogram_db(output_audio, hop_length=hop)
    vmax = float(max(s_in.max(), s_out.max()))
    vmin = vmax - 90.0
    idx = automation.most_varying(min(num_curves, len(automation.table)))
    cols = 2
    rows = int(np.ceil(len(idx) / cols))
    fig = plt.figure(figsize=(12, 6 + 1.6 * rows), dpi=dpi)
    grid = fig.add_gridspec(2 + rows, cols, height_ratios=[3, 3] + [1.6] * rows, hspace=0.7, wspace=0.25)
    duration = input_audio.shape[-1] / sample_rate
    freqs = np.linspace(0, sample_rate / 2, s_in.shape[0])
    f_lo = 20.0
    log_f = np.geomspace(f_lo, sample_rate / 2, 257)  # bin edges of the displayed log-frequency grid
    axes_spec = []
    for r, (spec, label) in enumerate(((s_in, "input"), (s_out, "output"))):
        ax = fig.add_subplot(grid[r, :])
        shown = _display_grid(spec, freqs, log_f, max_columns=1200)
        t_edges = np.linspace(0.0, duration, shown.shape[1] + 1)
        mesh = ax.pcolormesh(t_edges, log_f, shown, shading="flat", cmap="magma", vmin=vmin, vmax=vmax,
                             rasterized=True)
        ax.set_yscale("log")
        ax.set_ylim(f_lo, sample_rate / 2)
        ax.set_ylabel("frequency [Hz]")
        ax.set_title(f"{label}: log spectrogram (channel mean)")
        ax.set_xlim(0, duration)
        axes_spec.append(ax)
        fig.colorbar(mesh, ax=ax, pad=0.01, label="level [dB]")
    axes_spec[1].set_xlabel("time [s]")
    t = automation.times_s
    for k, j in enumerate(idx):
        p = automation.table[j]
        ax = fig.add_subplot(grid[2 + k // cols, k % cols])
        v = automation.values[:, j]
        if len(t) > 1:
            ax.plot(t, v, lw=1.2, color=f"C{k}")
        else:
            ax.axhline(v[0], lw=1.2, color=f"C{k}")
        ax.set_xlim(0, duration)
        ax.set_ylim(p.min, p.max)
        if p.scale == "log":
            ax.set_yscale("log")
        unit = f" [{p.unit}]" if p.unit else ""
        ax.set_title(f"{p.name}{unit}", fontsize=9)
        ax.tick_params(labelsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("time [s]", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(dest, format="png", dpi=dpi)
    plt.close(fig)
