"""pedalboard built-in backends: declared tables, neutrality, state, latency."""

import numpy as np
import pytest

from deepafx.chain import chain
from deepafx.hosts.builtin import BUILTIN_TABLES

from conftest import music_like

SR = 44100


@pytest.mark.parametrize("effect", sorted(BUILTIN_TABLES))
def test_every_builtin_builds_renders_and_defaults_round_trip(effect, rng):
    proc = chain({"backend": f"pedalboard.{effect}", "name": "p"}).build()
    x = music_like(rng, 2, 4096)
    y = proc.process(x, proc.param_table.defaults_normalized())
    assert y.shape == x.shape and np.isfinite(y).all()
    np.testing.assert_allclose(proc.param_table.denormalize(proc.param_table.defaults_normalized()),
                               proc.param_table.defaults(), rtol=1e-9)


def test_multiband_compressor_is_identity_at_defaults_and_compresses_otherwise(rng):
    mbc = chain({"backend": "builtin.multiband_compressor", "name": "m"}).build()
    x = 3 * music_like(rng, 2, 2 * SR)
    np.testing.assert_allclose(mbc.process(x, mbc.param_table.defaults_normalized()), x, atol=1e-5)
    mbc.reset()
    table = mbc.param_table
    v = table.defaults()
    for band in ("low", "mid", "high"):
        v[table.index(f"m.{band}_threshold_db")] = -40.0
        v[table.index(f"m.{band}_ratio")] = 10.0
    y = mbc.process(x, table.normalize(v))
    assert 20 * np.log10(np.abs(y).max() / np.abs(x).max()) < -6.0


def test_graphic_eq_band_gain_measured():
    eq = chain({"backend": "builtin.graphic_eq", "name": "g"}).build()
    t = np.arange(SR) / SR
    x = (0.1 * np.sin(2 * np.pi * 1000 * t))[None].repeat(2, 0).astype(np.float32)
    v = eq.param_table.defaults()
    v[eq.param_table.index("g.band_1000hz_gain_db")] = 6.0
    y = eq.process(x, eq.param_table.normalize(v))
    gain_db = 20 * np.log10(np.abs(y[:, SR // 2:]).max() / np.abs(x[:, SR // 2:]).max())
    assert gain_db == pytest.approx(6.0, abs=0.2)


def test_brickwall_limiter_latency_ceiling_and_chunking(rng):
    spec = chain({"backend": "pedalboard.BrickwallLimiter", "name": "b"})
    lim = spec.build()
    assert lim.latency_samples == 220  # 5 ms look-ahead at 44.1 kHz
    x = 4 * music_like(rng, 2, SR)
    p = lim.param_table.normalize([-6.0, 100.0])
    one = lim.process(x, p)
    assert 20 * np.log10(np.abs(one).max()) <= -6.0 + 0.1
    lim.reset()
    chunks = np.concatenate([lim.process(x[:, i:i + 1000], p) for i in range(0, SR, 1000)], -1)
    np.testing.assert_array_equal(chunks, one)
    # the output lags the input by the reported latency
    quiet = music_like(rng, 2, SR) * 0.1
    lim.reset()
    y = lim.process(quiet, p)
    np.testing.assert_allclose(y[:, 220:], quiet[:, :-220], atol=1e-6)


def test_invert_flips_polarity_in_a_chain(rng):
    """``pedalboard.Invert`` (no parameters) flips polarity exactly, alone or between learned stages."""
    x = (0.3 * rng.standard_normal((1, 4096))).astype(np.float32)
    inv = chain({"backend": "pedalboard.Invert", "name": "inv"}, sample_rate=44100)
    assert inv.param_table.names == [] and np.array_equal(inv.build().process(x), -x)
    both = chain({"backend": "pedalboard.Gain", "name": "g"}, {"backend": "pedalboard.Invert", "name": "inv"},
                 sample_rate=44100)
    out = both.build().process(x, both.param_table.normalize([-6.0]))
    assert np.allclose(out, -x * 10 ** (-6 / 20), atol=1e-6)
