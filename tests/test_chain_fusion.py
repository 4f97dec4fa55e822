"""Chain.process fixed costs: fused pedalboard runs equal one call per processor; parameters written on change."""

import numpy as np
import pytest

from deepafx.chain import ChainSpec, chain
from conftest import music_like

CHEAP = ChainSpec.from_file("builtin_channel")  # compressor → shelves → 3 peaks → limiter
MASTERING = chain(
    {"backend": "builtin.multiband_compressor", "name": "mbc"},
    {"backend": "builtin.graphic_eq", "name": "geq"},
    {"backend": "pedalboard.Gain", "name": "gain", "ranges": {"gain_db": [-12, 24]}},
    {"backend": "pedalboard.BrickwallLimiter", "name": "lim"},
    sample_rate=44100, name="mastering",
)
# a limiter with look-ahead in the middle, and a non-pedalboard processor between built-ins
MIXED = chain(
    {"backend": "pedalboard.Compressor", "name": "comp"},
    {"backend": "pedalboard.BrickwallLimiter", "name": "bwl"},
    {"backend": "pedalboard.PeakFilter", "name": "peak"},
    {"backend": "testing.one_pole", "name": "lp"},
    {"backend": "pedalboard.Distortion", "name": "dist"},
    {"backend": "pedalboard.Gain", "name": "gain"},
    sample_rate=44100, name="mixed",
)


def _one_call_each(inst, audio, x):
    """The unfused reference: every processor's own validated ``process`` call."""
    for proc, v in zip(inst.processors, inst.plugin_values(x)):
        audio = proc.process(audio, v)
    return audio


@pytest.mark.parametrize("spec, calls", [(CHEAP, 1), (MASTERING, 1), (MIXED, 4)], ids=["cheap", "mastering", "mixed"])
@pytest.mark.parametrize("block", [4410, 44100])
def test_fused_chain_equals_one_call_per_processor(rng, spec, calls, block):
    audio = music_like(rng, samples=3 * block)
    fused, ref = spec.build(), spec.build()
    assert fused.num_render_calls == calls
    draws = np.random.default_rng(1).uniform(0.05, 0.95, (4, len(fused.param_table)))
    for k in range(3):
        blk = audio[:, k * block : (k + 1) * block]
        y = fused.process(blk, draws[k])  # new values every block: parameter changes mid-stream
        np.testing.assert_array_equal(y, _one_call_each(ref, blk, draws[k]))
        assert y.shape == blk.shape
    fused.reset()
    ref.reset()
    np.testing.assert_array_equal(fused.process(audio[:, :block], draws[3]), _one_call_each(ref, audio[:, :block], draws[3]))


def test_brickwall_latency_streams_through_a_fused_run(rng):
    """The look-ahead of a limiter at the end of a run: chunked output equals the one-shot output."""
    audio = music_like(rng, samples=3 * 4410)
    one = MASTERING.build()
    x = np.full(len(one.param_table), 0.6)
    whole = one.process(audio, x)
    chunked = MASTERING.build()
    parts = [chunked.process(audio[:, i : i + 4410], x) for i in range(0, audio.shape[1], 4410)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    assert one.latency_samples == round(0.005 * 44100)
    np.testing.assert_array_equal(whole[:, : one.latency_samples], 0.0)  # the delayed start is silent


def test_parameters_are_written_only_when_they_change(rng):
    inst = CHEAP.build()
    writes = []
    for k, proc in enumerate(inst.processors):
        for j, fns in enumerate(proc._setters):
            proc._setters[j] = [lambda v, f=f, name=(k, j): (writes.append(name), f(v)) for f in fns]
    audio = music_like(rng, samples=2048)
    x = np.full(len(inst.param_table), 0.37)  # no parameter at its default (written at build)
    inst.process(audio, x)
    assert sorted(writes) == [(k, j) for k, p in enumerate(inst.processors) for j in range(len(p.param_table))]
    writes.clear()
    inst.process(audio, x)
    assert writes == []
    x2 = x.copy()
    x2[inst.param_table.index("peak2.gain_db")] = 0.7
    inst.process(audio, x2)
    assert writes == [(4, 1)]  # processor 4 (peak2), its parameter 1 (gain_db)
    writes.clear()
    inst.reset()  # a reset clears state, not parameters
    inst.process(audio, x2)
    assert writes == []
