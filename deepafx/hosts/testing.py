"""Reference processors used to *verify* the framework (not mocks of plugins).

* ``testing.waveshaper`` — a stateless numpy black box with an exact torch twin
  (:func:`waveshaper_torch`), so SPSA and finite-difference estimates through
  the worker pool can be checked against autodiff.
* ``testing.one_pole`` — a stateful one-pole low-pass (numpy, scipy.lfilter with
  carried state): chunked rendering must equal one-shot rendering.
* ``testing.fault`` — a pass-through gain that aborts the process (``os.abort``,
  like a segfaulting plugin) or hangs on demand, to exercise crash isolation.
"""

from __future__ import annotations

import os
import time

import numpy as np
from scipy.signal import lfilter

from deepafx.hosts.base import Processor, ProcessorSpec, register_backend
from deepafx.params import Param, ParamTable

WAVESHAPER_TABLE = ParamTable(
    (
        Param("drive_db", 0.0, 24.0, 6.0, "dB"),
        Param("bias", -0.5, 0.5, 0.0, ""),
        Param("mix", 0.0, 1.0, 1.0, ""),
        Param("output_db", -12.0, 12.0, 0.0, "dB"),
    )
)


def waveshaper_numpy(audio: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``y = g_out · (mix · tanh(g_in · x + bias) + (1 − mix) · x)``; values in plugin units."""
    drive_db, bias, mix, output_db = (float(v) for v in values)
    g_in, g_out = 10 ** (drive_db / 20), 10 ** (output_db / 20)
    return (g_out * (mix * np.tanh(g_in * audio + bias) + (1 - mix) * audio)).astype(np.float32)


def waveshaper_torch(audio, params):
    """Differentiable twin of ``testing.waveshaper``.

    Args:
        audio: ``(batch, channels, samples)`` tensor.
        params: normalized ``(batch, 4)`` on [0, 1] (table order of ``WAVESHAPER_TABLE``).

    Returns:
        ``(batch, channels, samples)`` tensor.
    """
    lo = audio.new_tensor([p.min for p in WAVESHAPER_TABLE])
    hi = audio.new_tensor([p.max for p in WAVESHAPER_TABLE])
    v = lo + params * (hi - lo)
    drive_db, bias, mix, output_db = (v[:, i, None, None] for i in range(4))
    g_in, g_out = 10 ** (drive_db / 20), 10 ** (output_db / 20)
    return g_out * (mix * (g_in * audio + bias).tanh() + (1 - mix) * audio)


class Waveshaper(Processor):
    def __init__(self, sample_rate: float):
        super().__init__()
        self.sample_rate = sample_rate
        self.param_table = WAVESHAPER_TABLE
        self._values = WAVESHAPER_TABLE.defaults()

    def set_values(self, values: np.ndarray) -> None:
        self._values = np.array(values, dtype=np.float64)

    def _render(self, audio: np.ndarray) -> np.ndarray:
        return waveshaper_numpy(audio, self._values)

    def reset(self) -> None:
        pass


@register_backend("testing.waveshaper")
def build_waveshaper(spec: ProcessorSpec, sample_rate: float) -> Processor:
    return Waveshaper(sample_rate)


class OnePole(Processor):
    """``y[n] = (1 − a) x[n] + a y[n − 1]`` with ``a = exp(−2π f_c / sr)``; state carried per channel."""

    def __init__(self, sample_rate: float):
        super().__init__()
        self.sample_rate = sample_rate
        self.param_table = ParamTable((Param("cutoff_hz", 20.0, 0.45 * sample_rate, 1000.0, "Hz", "log"),))
        self._a = 0.0
        self._state: np.ndarray | None = None
        self.set_values(self.param_table.defaults())

    def set_values(self, values: np.ndarray) -> None:
        self._a = float(np.exp(-2 * np.pi * float(values[0]) / self.sample_rate))

    def _render(self, audio: np.ndarray) -> np.ndarray:
        if self._state is None or self._state.shape[0] != audio.shape[0]:
            self._state = np.zeros((audio.shape[0], 1))
        y, self._state = lfilter([1 - self._a], [1, -self._a], audio, axis=-1, zi=self._state)
        return y

    def reset(self) -> None:
        self._state = None


@register_backend("testing.one_pole")
def build_one_pole(spec: ProcessorSpec, sample_rate: float) -> Processor:
    return OnePole(sample_rate)


class Fault(Processor):
    """Gain that fails on purpose. Options:

    * ``mode``: ``"abort"`` (``os.abort()``, SIGABRT like a crashing plugin),
      ``"hang"`` (sleeps ``hang_seconds``, default 3600 s), or ``"raise"``.
    * ``on_render``: fail on this render call of the instance (1-based; default 1).
    * ``once_file``: if given, fail only while this file does not exist (it is
      created just before failing), so a restarted worker succeeds.
    """

    def __init__(self, spec: ProcessorSpec, sample_rate: float):
        super().__init__()
        self.sample_rate = sample_rate
        self.param_table = ParamTable((Param("gain_db", -12.0, 12.0, 0.0, "dB"),))
        self.mode = spec.options.get("mode", "abort")
        self.on_render = int(spec.options.get("on_render", 1))
        self.once_file = spec.options.get("once_file")
        self.hang_seconds = float(spec.options.get("hang_seconds", 3600))
        self._gain = 1.0
        self._count = 0

    def set_values(self, values: np.ndarray) -> None:
        self._gain = 10 ** (float(values[0]) / 20)

    def _render(self, audio: np.ndarray) -> np.ndarray:
        self._count += 1
        if self._count == self.on_render and self._claim_failure():
            if self.mode == "abort":
                os.abort()
            elif self.mode == "hang":
                time.sleep(self.hang_seconds)
            else:
                raise RuntimeError("testing.fault raised on purpose")
        return audio * self._gain

    def _claim_failure(self) -> bool:
        """True if this instance should fail now; with ``once_file`` only the first
        instance to create the file (atomically, across processes) fails."""
        if not self.once_file:
            return True
        try:
            os.close(os.open(self.once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def reset(self) -> None:
        self._count = 0


@register_backend("testing.fault")
def build_fault(spec: ProcessorSpec, sample_rate: float) -> Processor:
    return Fault(spec, sample_rate)
