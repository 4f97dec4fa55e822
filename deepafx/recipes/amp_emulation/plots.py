"""Figures of the amp-emulation evaluation (matplotlib, Agg backend).

* :func:`plot_comparison` — waveforms (whole piece and a 40 ms zoom on its
  loudest part) and log spectrograms of the DI, the target and the outputs of
  the methods, for one test piece.
"""

from __future__ import annotations

from typing import IO, Mapping

import numpy as np

from deepafx.automation.plots import log_spectrogram_db

__all__ = ["plot_comparison"]


def plot_comparison(dest: str | IO[bytes], signals: Mapping[str, np.ndarray], sample_rate: float, title: str = "",
                    zoom_ms: float = 40.0, dpi: int = 100) -> None:
    """Save a PNG: one row per signal, its waveform, a zoom and its log spectrogram.

    Waveforms share one amplitude scale per column; spectrograms share a
    log-frequency axis (Hz, 20 Hz to Nyquist) and a colour scale (dB re full
    scale, the top 90 dB below the loudest). The zoom is ``zoom_ms`` around the
    loudest sample of the first signal after the DI (the target).

    Args:
        dest: File path or binary file object.
        signals: Label → ``(channels, samples)`` at ``sample_rate`` (same length), e.g.
            ``{"DI": x, "target": y, "model": ŷ}``; drawn in this order.
        sample_rate: Hz.
        title: Figure title.
        zoom_ms: Length of the zoomed window, ms (> 0).
        dpi: Dots per inch; the figure is 15 x 2.3·rows inches.

    Raises:
        ValueError: no signals, or signals of different lengths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not signals:
        raise ValueError("plot_comparison needs at least one signal")
    labels = list(signals)
    mono = {k: np.asarray(v, dtype=np.float64).reshape(-1, np.shape(v)[-1]).mean(0) for k, v in signals.items()}
    n = len(next(iter(mono.values())))
    if any(len(v) != n for v in mono.values()):
        raise ValueError(f"signals must have equal lengths, got {[len(v) for v in mono.values()]}")
    ref = mono[labels[1]] if len(labels) > 1 else mono[labels[0]]
    centre = int(np.argmax(np.abs(ref)))
    half = int(zoom_ms * 1e-3 * sample_rate / 2)
    z0, z1 = max(0, centre - half), min(n, centre + half)
    t = np.arange(n) / sample_rate
    specs = {k: log_spectrogram_db(v) for k, v in mono.items()}
    vmax = max(float(s.max()) for s in specs.values())
    amp = max(float(np.abs(v).max()) for v in mono.values()) * 1.05 or 1.0
    zamp = max(float(np.abs(v[z0:z1]).max()) for v in mono.values()) * 1.05 or 1.0
    rows = len(labels)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 2.3 * rows), dpi=dpi, squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1, 2]})
    freqs = np.linspace(0, sample_rate / 2, next(iter(specs.values())).shape[0])
    for r, label in enumerate(labels):
        ax = axes[r, 0]
        ax.plot(t, mono[label], lw=0.4, color=f"C{r}")
        ax.axvspan(z0 / sample_rate, z1 / sample_rate, color="0.85")
        ax.set_ylim(-amp, amp)
        ax.set_xlim(0, n / sample_rate)
        ax.set_ylabel(label)
        ax = axes[r, 1]
        ax.plot(t[z0:z1] * 1e3, mono[label][z0:z1], lw=0.8, color=f"C{r}")
        ax.set_ylim(-zamp, zamp)
        ax = axes[r, 2]
        spec = specs[label]
        frames = np.linspace(0, n / sample_rate, spec.shape[1])
        ax.pcolormesh(frames, freqs[1:], spec[1:], shading="auto", cmap="magma", vmin=vmax - 90, vmax=vmax,
                      rasterized=True)
        ax.set_yscale("log")
        ax.set_ylim(20, sample_rate / 2)
        ax.set_ylabel("Hz")
    axes[0, 0].set_title("waveform (amplitude, full scale 1)")
    axes[0, 1].set_title(f"zoom: {zoom_ms:g} ms around the target's peak")
    axes[0, 2].set_title("log spectrogram (dB re full scale, 90 dB range)")
    axes[-1, 0].set_xlabel("time [s]")
    axes[-1, 1].set_xlabel("time [ms]")
    axes[-1, 2].set_xlabel("time [s]")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dest, format="png", dpi=dpi)
    plt.close(fig)
