"""VST instruments through dawdreamer (backend dawdreamer.instrument), with amsynth."""

import os

import numpy as np
import pytest

from deepafx.chain import chain
from deepafx.hosts.base import PluginError

AMSYNTH = "/usr/lib/vst/amsynth_vst.so"
EFFECT = "/usr/lib/vst/ZamCompX2-vst.so"
pytestmark = pytest.mark.skipif(not os.path.exists(AMSYNTH), reason="amsynth not installed (scripts/install.sh installs it)")


def _synth(**options):
    opts = {"path": AMSYNTH, "param_map": "param_maps/amsynth.yaml", "notes": [[60, 100], [45, 60]], "note_duration_seconds": 0.4}
    opts.update(options)
    return chain({"backend": "dawdreamer.instrument", "name": "syn", "options": opts}, sample_rate=16000).build()


def test_renders_one_channel_per_note_and_parameters_matter():
    syn = _synth()
    table = syn.param_table
    assert len(table) == 11 and table["syn.filter_cutoff"].max == pytest.approx(64.0)
    assert syn.is_instrument
    silence = np.zeros((1, 16000), np.float32)
    x = table.defaults_normalized()
    y = syn.process(silence, x)
    assert y.shape == (2, 16000)
    rms = np.sqrt((y**2).mean(1))
    assert (rms > 1e-3).all()
    # the key is released at 0.4 s and the default release is 0.5 ms: the tail is silent
    assert np.abs(y[:, 8000:]).max() < 1e-3 * np.abs(y).max()
    dark = x.copy()
    dark[table.index("syn.filter_cutoff")] = 0.02
    y_dark = syn.process(silence, dark)
    spec = lambda s: np.abs(np.fft.rfft(s[0, :6000]))
    hi = slice(1500, None)  # above 4 kHz at 16 kHz, 6000-point FFT
    assert spec(y_dark)[hi].sum() < 0.2 * spec(y)[hi].sum()


def test_effects_and_bad_options_are_refused():
    if os.path.exists(EFFECT):
        with pytest.raises(PluginError, match="effect, use backend 'dawdreamer'"):
            chain({"backend": "dawdreamer.instrument", "name": "x", "options": {"path": EFFECT}}).build()
    with pytest.raises(PluginError, match="pitch 0-127"):
        _synth(notes=[[200, 100]])
    with pytest.raises(PluginError, match="unknown options"):
        _synth(volume=3)
