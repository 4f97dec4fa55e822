"""Renders with NaN/Inf samples: dropped items, zero gradient rows, a clear error when none is left.

The plugin is a real Faust DSP through dawdreamer, ``y = drive · x · sqrt(headroom − |x|)``:
Faust does not clamp, so every render whose ``headroom`` lies below the input's
peak is NaN (the square root of a negative number). Inputs are square waves of
a known peak, so which items land in the NaN region is exact.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("dawdreamer", reason="dawdreamer not installed: pip install dawdreamer (hosts Faust)")

from deepafx.chain import chain  # noqa: E402
from deepafx.fx import FxLayer, NonFiniteRenderError, spsa_loss_gradient  # noqa: E402
from deepafx.hosts.base import NonFiniteOutputError  # noqa: E402

CODE = """
drive = hslider("drive", 0.5, 0, 1, 0.001);
headroom = hslider("headroom", 0.8, 0, 1, 0.001);
process = _ <: _, abs : *(drive), sqrt(headroom - _) : *;
"""
SR = 8000
N = 800
PEAK = 0.5
#: ``(drive, headroom)`` per item: 0 kept; 1 NaN (headroom < peak); 2 finite, but its
#: ``headroom − ε`` render is NaN; 3 kept. Normalized values equal plugin values (ranges [0, 1]).
PARAMS = [[0.5, 0.9], [0.5, 0.3], [0.6, PEAK + 0.004], [0.7, 0.95]]
DROPPED = [False, True, True, False]


def nan_spec(name="nanfx"):
    return chain({"backend": "faust", "name": "root", "options": {"code": CODE, "channels": 1}},
                 sample_rate=SR, name=name)


def square(batch, peak=PEAK, n=N):
    """``(batch, 1, n)`` square waves of exactly ``peak`` (no sample at 0)."""
    wave = peak * np.sign(np.sin(2 * np.pi * 200 * (np.arange(n) + 0.5) / SR))
    return torch.from_numpy(np.tile(wave.astype(np.float32), (batch, 1, 1)))


@pytest.fixture(scope="module", params=["spsa", "fd"])
def layer(request):
    with FxLayer(nan_spec(), 4, num_workers=1, estimator=request.param, epsilon=0.01, seed=5) as fx:
        yield fx


def test_chain_marks_a_nonfinite_render_and_its_next_render_is_clean():
    raising = nan_spec().build()
    with pytest.raises(NonFiniteOutputError, match="NaN/Inf"):
        raising.process(square(1)[0].numpy(), np.array([0.5, 0.3]))
    marking = dataclasses.replace(nan_spec(), nonfinite="mark").build()
    x = square(1)[0].numpy()
    y = marking.process(x, np.array([0.5, 0.3]))
    assert y.shape == x.shape and np.isnan(y).all()
    # the processor was reset; the next block renders exactly what a fresh instance renders
    np.testing.assert_array_equal(marking.process(x, np.array([0.5, 0.9])), raising.process(x, np.array([0.5, 0.9])))
    assert np.isfinite(marking.process(x, np.array([0.5, 0.9]))).all()


def test_dropped_items_have_zero_gradient_rows_and_the_others_are_untouched(layer):
    fx = layer
    x, p0 = square(4), torch.tensor(PARAMS)
    target = 0.1 * square(4)
    # a linear "encoder": item i's one-hot code → logits; column i of its weight gradient is item i's
    encoder = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.logit(p0).T)
    state = fx.generator.get_state()

    def step(params_fixed):
        encoder.zero_grad()
        params = torch.sigmoid(encoder(torch.eye(4)))
        params = torch.where(params_fixed, params.detach(), params)
        y = fx(x, params)
        ((y - target) ** 2).sum().backward()  # not masked: the layer alone keeps NaN out
        return y.detach(), encoder.weight.grad.clone()

    y, grad = step(torch.zeros(4, 2, dtype=torch.bool))
    assert fx.last_finite.tolist() == [not d for d in DROPPED]
    assert int((~fx.last_finite).sum()) == 2  # the count a task reports
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert torch.equal(y[1], torch.zeros_like(y[1]))  # NaN main render → zeros
    assert y[2].abs().max() > 0  # finite main render kept; only a perturbed one was NaN
    assert torch.equal(grad[:, 1], torch.zeros(2)) and torch.equal(grad[:, 2], torch.zeros(2))
    assert (grad[:, [0, 3]].abs() > 0).all()

    # the same draws with items 1 and 2 moved out of the NaN region: rows 0 and 3 are bit-identical
    fx.generator.set_state(state)
    with torch.no_grad():
        encoder.weight[:, 1] = torch.logit(torch.tensor([0.5, 0.85]))
        encoder.weight[:, 2] = torch.logit(torch.tensor([0.6, 0.9]))
    y2, grad2 = step(torch.zeros(4, 2, dtype=torch.bool))
    assert fx.last_finite.all()
    assert torch.equal(y2[[0, 3]], y[[0, 3]]) and torch.equal(grad2[:, [0, 3]], grad[:, [0, 3]])
    assert (grad2[:, [1, 2]].abs() > 0).all()


def test_spsa_loss_gradient_drops_items(layer):
    fx = layer
    x = square(4)
    target = 0.1 * square(4)
    loss_fn = lambda y, t: ((y - t) ** 2).mean(dim=(1, 2))  # noqa: E731
    loss, grad = spsa_loss_gradient(fx, torch.tensor(PARAMS), target, loss_fn, epsilon=0.01,
                                    generator=torch.Generator().manual_seed(1), audio=x)
    assert torch.isfinite(loss).tolist() == [not d for d in DROPPED]  # dropped: loss NaN
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[1], torch.zeros(2)) and torch.equal(grad[2], torch.zeros(2))
    assert (grad[[0, 3]].abs() > 0).all()


def test_every_item_nonfinite_raises_one_clear_line(layer):
    fx = layer
    params = torch.tensor([[0.5, 0.2]] * 4, requires_grad=True)
    with pytest.raises(NonFiniteRenderError) as err:
        fx(square(4), params)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'nanfx'", "root (faust)", "every item of this step (4 of 4)", "NaN/Inf",
                 "narrow the learned parameter ranges"):
        assert part in msg, part
    with pytest.raises(NonFiniteRenderError, match="every item of this step"):
        spsa_loss_gradient(fx, params.detach(), square(4), lambda y, t: ((y - t) ** 2).mean(dim=(1, 2)),
                           audio=square(4))
    # the layer goes on: the next step renders and differentiates normally
    params = torch.tensor([[0.5, 0.9]] * 4, requires_grad=True)
    (fx(square(4), params) ** 2).sum().backward()
    assert fx.last_finite.all() and torch.isfinite(params.grad).all() and (params.grad != 0).any()


def test_hybrid_chain_masks_the_straight_through_gradient():
    from deepafx.hybrid import HybridChain

    spec = chain({"backend": "ddsp.gain", "name": "pre"},
                 {"backend": "faust", "name": "root", "options": {"code": CODE, "channels": 1}},
                 sample_rate=SR, name="hybrid_nan")
    with HybridChain(spec, 4, num_workers=1, seed=2) as hc:
        gain = torch.full((4, 1), 0.5, requires_grad=True)  # 0 dB: the faust stage sees the square wave as is
        p = torch.tensor(PARAMS, requires_grad=True)
        y = hc(square(4), torch.cat([gain, p], dim=1))
        (y ** 2).sum().backward()
    assert hc.last_finite.tolist() == [not d for d in DROPPED]
    assert torch.isfinite(gain.grad).all() and torch.isfinite(p.grad).all()
    assert gain.grad[[1, 2]].abs().sum() == 0 and p.grad[[1, 2]].abs().sum() == 0
    assert (gain.grad[[0, 3]].abs() > 0).all()


def test_training_through_a_nan_region_keeps_the_weights_finite(tmp_path):
    """Three real training steps of the mastering task on the Faust chain: items of the loud tracks
    (peak 0.95, above the predicted headroom ≈ 0.8) render NaN and are dropped, the quiet ones train."""
    from deepafx.recipes import get_recipe
    from deepafx.recipes.mastering.train import MasteringTask
    from deepafx.trainer import train

    t = np.arange(2 * SR) / SR

    def track(peak, f):
        x = (peak * np.sign(np.sin(2 * np.pi * f * t + 0.3))).astype(np.float32)[None]
        return x, ((0.5 * x * np.sqrt(0.9 - np.abs(x))).astype(np.float32) if peak < 0.9 else x)

    infos = []  # what each step hands the trainer to log

    class Task(MasteringTask):
        def load_tracks(self):
            train = [track(0.95, 110), track(0.3, 150), track(0.95, 190), track(0.3, 230)]
            return train, [track(0.3, 170), track(0.95, 130)]

        def step(self, stage, b):
            loss, info = super().step(stage, b)
            infos.append((stage.name, info))
            return loss, info

    config = get_recipe("mastering").bind({
        "chain": {"name": "nanfx", "sample_rate": SR,
                  "processors": [{"backend": "faust", "name": "root", "options": {"code": CODE, "channels": 1}}]},
        "model": {"context_seconds": 0.5, "frame_seconds": 0.25, "n_fft": 256, "hop_length": 128, "n_mels": 16,
                  "channels": 1, "encoder_kwargs": {"width_mult": 0.25}},
        "train": {"batch_size": 4, "epochs": 1, "steps_per_epoch": 3, "valid_steps": 1, "pretrain_steps": 0,
                  "num_threads": 1, "seed": 3, "log_every": 2, "validate_first": False},
        "render": {"num_workers": 1},
    })
    task = Task(config, tmp_path / "data")
    result = train(task, tmp_path / "run", config)
    steps = [info for name, info in infos if name == "spsa"]
    assert len(steps) == 3
    assert steps[0]["dropped_items"] == 2  # both loud tracks
    assert all(s["dropped_items"] < 4 and math.isfinite(s["loss"]) for s in steps)
    assert all(math.isfinite(h["valid_loss"]) for h in result["history"] if "valid_loss" in h)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())
    # the count reaches TensorBoard with the steps' other values: every log_every = 2 steps (and at the epoch's
    # end) the sum of the counts and the mean of the other values since the previous record
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/dropped_items")]
    assert logged == [float(steps[0]["dropped_items"] + steps[1]["dropped_items"]), float(steps[2]["dropped_items"])]
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([(steps[0]["loss"] + steps[1]["loss"]) / 2, steps[2]["loss"]], rel=1e-6)
    assert [e.value for e in events.Scalars("train/logged_steps")] == [2.0, 1.0]
    # and history.jsonl: the epoch's record holds the epoch's count
    epochs = [h for h in result["history"] if h.get("stage") == "spsa" and h.get("epoch", -1) >= 0]
    assert [h["dropped_items"] for h in epochs] == [sum(s["dropped_items"] for s in steps)]
