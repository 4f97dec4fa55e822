"""Hybrid chains: DDSP stages exact by autograd, black boxes by SPSA, one declaration and one parameter vector."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from deepafx import ddsp
from deepafx.assets import plugins_dir
from deepafx.chain import ChainSpec, chain
from deepafx.fx import FxLayer
from deepafx.hybrid import DDSPStage, HybridChain, is_hybrid, split_stages
from deepafx.params import ParameterError

pytest.importorskip("pedalboard", reason="pedalboard not installed: pip install pedalboard")

SR = 44100
#: Black boxes first (drive), then differentiable tone shaping: no straight-through estimate needed.
DRIVE_EQ = chain(
    {"backend": "pedalboard.Gain", "name": "pre"},
    {"backend": "pedalboard.Distortion", "name": "dist"},
    {"backend": "ddsp.peq", "name": "eq", "options": {"num_peaks": 2}},
    {"backend": "ddsp.gain", "name": "out"},
    sample_rate=SR, name="drive_eq",
)


@pytest.fixture(scope="module")
def drive_eq():
    with HybridChain(DRIVE_EQ, batch_size=2, num_workers=1, num_perturbations=8, seed=5) as h:
        yield h


def _audio(seed=0, batch=2, samples=4096):
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    x = 0.3 * np.sin(2 * np.pi * 110 * t) * np.exp(-3 * t) + 0.02 * rng.standard_normal((batch, 1, samples))
    return torch.from_numpy(x.astype(np.float32))


def _params(h, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(2, h.num_params, generator=g)


def test_one_vector_split_by_stage_tables_renders_like_the_in_process_chain(drive_eq):
    assert [type(s) for s in drive_eq.stages] == [FxLayer, DDSPStage, DDSPStage]
    assert drive_eq.stage_sizes == [2, 12, 1]
    assert drive_eq.param_names == DRIVE_EQ.param_table.names  # the chain's own flat table, in order
    assert drive_eq.param_table == DRIVE_EQ.param_table
    assert [s.input_grad for s in drive_eq.fx_layers] == ["none"]
    x, p = _audio(), _params(drive_eq)
    y = drive_eq.render(x, p)
    ref = DRIVE_EQ.build()  # the same entries through the host interface (DDSP stages as numpy backends)
    for i in range(2):
        np.testing.assert_allclose(y[i].numpy(), ref.process(x[i].numpy(), p[i].double().numpy()), atol=2e-5)
        ref.reset()
    with pytest.raises(ParameterError, match="num_params=15"):
        drive_eq(x, p[:, :14])


def test_render_workers_host_ddsp_stages_like_the_in_process_chain():
    """A chain with ``ddsp.`` entries renders in a render worker (what ``deepafx evaluate`` / ``process`` use):
    the worker imports deepafx.ddsp for them; block after block (the EQ's ringing carried) it equals the
    in-process chain, and a reset starts the stream again."""
    from deepafx.workers import RenderPool, RenderRequest

    x = _audio(batch=1, samples=8192)[0].numpy()
    p = _params(type("H", (), {"num_params": len(DRIVE_EQ.param_table)})())[0].double().numpy()
    ref = DRIVE_EQ.build()
    want = [ref.process(x[:, :4096], p), ref.process(x[:, 4096:], p)]
    with RenderPool(DRIVE_EQ, num_slots=1, instances_per_slot=1, num_workers=1) as pool:
        got = [pool.render([RenderRequest(0, x[:, a:a + 4096], p[None])])[0][0] for a in (0, 4096)]
        again = pool.render([RenderRequest(0, x[:, :4096], p[None], reset=True)])[0][0]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)
    np.testing.assert_allclose(again, want[0], atol=1e-6)
    assert np.max(np.abs(want[1] - DRIVE_EQ.build().process(x[:, 4096:], p))) > 1e-4  # the carried state matters


def test_differentiable_stages_get_exact_gradients(drive_eq):
    """The EQ and gain gradients equal plain autograd through fresh torch modules on the black box's output."""
    x, p, target = _audio(), _params(drive_eq), _audio(seed=9)
    drive_eq.train()
    drive_eq.reset()
    pp = p.clone().requires_grad_(True)
    (drive_eq(x, pp) - target).square().mean().backward()
    eq = ddsp.ParametricEQ(SR, num_peaks=2)
    gain = ddsp.Gain(SR)
    q = p.clone().requires_grad_(True)
    drive = drive_eq.fx_layers[0].render(x, p[:, :2])  # main instances: the same audio the chain fed the EQ
    (gain(eq(drive, q[:, 2:14]), q[:, 14:]) - target).square().mean().backward()
    torch.testing.assert_close(pp.grad[:, 2:], q.grad[:, 2:], rtol=1e-5, atol=1e-9)
    assert q.grad[:, 2:].abs().min() > 0


def test_black_box_spsa_gradient_agrees_with_finite_differences(drive_eq):
    """Averaged SPSA (with dy exact through the DDSP EQ) against central differences of the whole chain's loss."""
    x, p, target = _audio(), _params(drive_eq), _audio(seed=9)

    def loss(params):
        drive_eq.reset()
        return (drive_eq.render(x, params).double() - target).square().mean(dim=(1, 2))  # per item

    fd = torch.zeros(2, 2)
    h = 1e-3
    for j in range(2):
        step = torch.zeros_like(p)
        step[:, j] = h
        fd[:, j] = ((loss(p + step) - loss(p - step)) / (2 * h)).float()
    drive_eq.train()
    draws = []
    for _ in range(12):  # 12 calls × K = 8 draws
        drive_eq.reset()
        pp = p.clone().requires_grad_(True)
        (drive_eq(x, pp) - target).square().mean(dim=(1, 2)).sum().backward()
        draws.append(pp.grad[:, :2])
    g = torch.stack(draws).mean(0)
    cos = torch.nn.functional.cosine_similarity(g.flatten(), fd.flatten(), dim=0).item()
    assert cos >= 0.95, (g, fd)


def test_black_box_after_a_differentiable_stage_passes_the_straight_through_estimate():
    spec = chain({"backend": "ddsp.gain", "name": "pre"}, {"backend": "pedalboard.Distortion", "name": "dist"},
                 {"backend": "ddsp.gain", "name": "post"}, sample_rate=SR, name="st")
    x, target = _audio(), _audio(seed=9)
    p = torch.tensor([[0.4, 0.3, 0.6], [0.55, 0.5, 0.45]])
    with HybridChain(spec, batch_size=2, num_workers=1, seed=2) as h:
        assert [s.input_grad for s in h.fx_layers] == ["straight_through"]
        h.train()
        pp = p.clone().requires_grad_(True)
        (h(x, pp) - target).square().sum().backward()
        # the documented estimate: dL/d(input of the black box) := dL/d(its output)
        pre, post = ddsp.Gain(SR), ddsp.Gain(SR)
        q = p.clone().requires_grad_(True)
        z = pre(x, q[:, :1])
        y_bb = h.fx_layers[0].render(z.detach(), p[:, 1:2])
        (post(z + (y_bb - z).detach(), q[:, 2:]) - target).square().sum().backward()
        torch.testing.assert_close(pp.grad[:, [0, 2]], q.grad[:, [0, 2]], rtol=1e-4, atol=1e-6)
        h.fx_layers[0].input_grad = "none"  # what HybridChain(input_grad="none") builds, without new workers
        pp = p.clone().requires_grad_(True)
        (h(x, pp) - target).square().sum().backward()
        assert torch.all(pp.grad[:, 0] == 0) and torch.all(pp.grad[:, 2] != 0)


def test_ddsp_state_streams_per_slot_and_resets():
    spec = chain({"backend": "pedalboard.Gain", "name": "g"},
                 {"backend": "ddsp.reverb", "name": "verb", "options": {"ir_seconds": 0.1}, "fixed": {"mix": 0.5}},
                 sample_rate=SR, name="verb")
    x = _audio(samples=3000)
    p = torch.tensor([[0.5, 0.6], [0.55, 0.2]])
    with HybridChain(spec, batch_size=2, num_workers=1) as h:
        assert h.param_names == ["g.gain_db", "verb.decay_s"]
        h.eval()
        one = h(x, p)
        h.reset()
        chunks = torch.cat([h(x[..., a:b], p) for a, b in ((0, 1000), (1000, 1001), (1001, 3000))], -1)
        torch.testing.assert_close(chunks, one, rtol=0, atol=2e-6)
        again = h(x[..., :1000], p)  # without reset: the reverb tail of the last block is added
        assert (again - one[..., :1000]).abs().max() > 1e-4
        h.reset([0])
        torch.testing.assert_close(h(x[:1, :, :1000], p[:1]), one[:1, :, :1000], rtol=0, atol=2e-6)


def test_yaml_declaration_learn_fixed_ranges_and_errors(tmp_path):
    path = tmp_path / "hybrid.yaml"
    path.write_text(textwrap.dedent("""
        name: tone
        sample_rate: 22050
        processors:
          - {backend: ddsp.gain, name: trim, ranges: {gain_db: [-6, 6]}}
          - {backend: ddsp.peq, name: eq, options: {num_peaks: 1, shelves: false},
             learn: [peak1_gain_db, peak1_freq_hz], fixed: {peak1_q: 2.0}}
          - {backend: ddsp.reverb, name: verb, options: {ir_seconds: 0.1}}
    """))
    spec = ChainSpec.from_file(path)
    assert is_hybrid(spec) and [d for d, _ in split_stages(spec)] == [True, True, True]
    h = HybridChain(path, batch_size=1)  # no black box: no worker is started
    assert h.fx_layers == [] and h.current_epsilon() == 0.0
    assert h.param_names == ["trim.gain_db", "eq.peak1_gain_db", "eq.peak1_freq_hz", "verb.decay_s", "verb.mix"]
    assert h.param_table["trim.gain_db"].min == -6.0 and h.param_table == spec.param_table
    v = h.stages[1].values(torch.tensor([[1.0, 0.0]]))
    assert v.tolist() == [[18.0, 30.0, 2.0]]  # learned gain and frequency, fixed Q
    x = torch.randn(1, 1, 256)
    y = h(x, torch.tensor([[1.0, 0.5, 0.5, 0.1, 0.0]]))  # +6 dB trim, reverb fully dry
    v = h.stages[1].values(torch.tensor([[0.5, 0.5]]))
    eq = ddsp.ParametricEQ(22050, num_peaks=1, shelves=False).render(x * 10 ** (6 / 20), v.float())[..., :256]
    torch.testing.assert_close(y, eq, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ddsp.peq"):
        HybridChain(chain({"backend": "ddsp.eq", "name": "e"}), batch_size=1)
    with pytest.raises(ParameterError, match="both learned and fixed"):
        HybridChain(chain({"backend": "ddsp.gain", "name": "g", "learn": ["gain_db"], "fixed": {"gain_db": 1}}), 1)
    with pytest.raises(ParameterError, match="'trim.gain_db'"):
        h(x, torch.tensor([[1.5, 0.5, 0.5, 0.1, 0.0]]))
    # the packaged chain files declare no DDSP stage and stay plain
    for f in sorted((plugins_dir() / "chains").glob("*.yaml")):
        assert not is_hybrid(ChainSpec.from_file(f)), f.name


# ----------------------------------------------------------------------------- the automation task on a hybrid chain
TINY_AMP = [
    "data.train_minutes=0.3", "data.max_piece_seconds=6", "data.min_piece_seconds=3",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "render.num_workers=1", "train.epochs=2", "train.steps_per_epoch=3",
    "train.valid_steps=2", "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3",
    "train.start_renders=8", "train.start_seconds=2",  # the config's static start, searched briefly
]


@pytest.mark.slow
def test_amp_quick_hybrid_trains_through_a_hybrid_chain_and_resumes_exactly(tmp_path):
    """``amp_emulation/quick_hybrid``: the task builds a HybridChain; a resumed run equals the uninterrupted one."""
    from deepafx.config import load_config
    from deepafx.recipes.amp_emulation.data import AmpDataConfig
    from deepafx.recipes.amp_emulation.train import train_from_config

    if not Path(AmpDataConfig().soundfont).is_file():
        pytest.skip("FluidR3_GM SoundFont not installed: apt-get install fluid-soundfont-gm")
    config = Path(__file__).resolve().parent.parent / "recipes" / "amp_emulation" / "quick_hybrid.yaml"
    data = tmp_path / "data"
    full = train_from_config(load_config(config, TINY_AMP), tmp_path / "a", data)
    # stopped at the end of the first SPSA epoch (2 pretraining + 3 steps): a resume may change max_steps only
    train_from_config(load_config(config, TINY_AMP + ["train.max_steps=5"]), tmp_path / "b", data)
    resumed = train_from_config(load_config(config, TINY_AMP), tmp_path / "b", data, resume=True)

    def losses(history):
        return [(h.get("train_loss"), h.get("valid_loss")) for h in history if h.get("epoch", -1) >= 0]

    assert len(losses(full["history"])) == 2 and losses(resumed["history"]) == losses(full["history"])
    assert all(np.isfinite(v) for pair in losses(full["history"]) for v in pair)
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)
    assert [p["backend"] for p in last["chain"]["processors"]] == [
        "builtin.multiband_compressor", "pedalboard.Distortion", "ddsp.peq", "ddsp.gain"]
    assert last["param_names"][-16:] == [f"eq.{n}" for n in ddsp.ParametricEQ().param_table.names] + ["gain.gain_db"]
    assert any(k.startswith("stages.0.") for k in last["task"]["fx"])  # the black-box stage's SPSA generator
    # the static start searched the hybrid chain rendered in workers (ddsp. stages included), never worse than its defaults
    start = json.loads((tmp_path / "a" / "static_start.json").read_text())
    assert len(start["params"]) == len(last["param_names"]) and start["objective"] <= start["default_objective"]
    # `deepafx process` renders the hybrid checkpoint's automation through render workers (DDSP stages included)
    from deepafx.cli import main
    import soundfile as sf

    di = sorted((data / "test").glob("*_input.wav"))[0]
    out, auto = tmp_path / "out.wav", tmp_path / "auto.json"
    assert main(["process", "--checkpoint", str(tmp_path / "a"), str(di), str(out), "--automation", str(auto)]) == 0
    y = sf.read(str(out), dtype="float32", always_2d=True)[0]
    assert y.shape[0] == sf.info(str(di)).frames and np.all(np.isfinite(y)) and np.max(np.abs(y)) > 1e-3
    assert list(json.loads(auto.read_text())["parameters"]) == last["param_names"]
