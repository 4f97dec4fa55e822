"""Real third-party plugins differentiated through the Fx layer (rendered in worker processes).

For each backend — a Zam VST3 through pedalboard, an LSP VST2 through dawdreamer,
a Faust DSP through dawdreamer, the amsynth VST2 instrument through dawdreamer and
the Dexed engine — the test matches a target
rendered by the same plugin at other parameters (multi-resolution STFT loss): the
SPSA gradient averaged over a few draws must point downhill — one normalized step
along −g lowers the loss, measured with a fresh instance.
"""

import os

import numpy as np
import pytest
import torch

from deepafx.chain import chain
from deepafx.fx import FxLayer
from deepafx.losses import MultiResolutionSTFTLoss

from conftest import music_like

ZAM = "/usr/lib/vst3/ZamCompX2.vst3"
LSP = "/usr/lib/vst/lsp-plugins/compressor-stereo.so"

CASES = {
    "zam_vst3": (ZAM, lambda: chain({"backend": "vst3", "name": "comp", "options": {"path": ZAM},
                                     "learn": ["threshold_db", "ratio", "makeup_db"]}, sample_rate=44100), 2),
    "lsp_vst2": (LSP, lambda: chain({"backend": "dawdreamer", "name": "comp",
                                     "options": {"path": LSP, "param_map": "param_maps/lsp_compressor_stereo.yaml"}},
                                    sample_rate=44100), 2),
    "faust": (None, lambda: chain({"backend": "faust", "name": "amp", "options": {"dsp": "tube_preamp.dsp"}},
                                  sample_rate=44100), 1),
    "amsynth_vst2_instrument": ("/usr/lib/vst/amsynth_vst.so", lambda: chain(
        {"backend": "dawdreamer.instrument", "name": "syn",
         "options": {"path": "/usr/lib/vst/amsynth_vst.so", "param_map": "param_maps/amsynth.yaml",
                     "notes": [[57, 100]], "note_duration_seconds": 0.3},
         "learn": ["filter_cutoff", "filter_resonance", "amp_sustain"]}, sample_rate=16000), 1),
    # Dexed's landscape is a needle over all 145 values; learn the six operator output levels.
    "dexed": (None, lambda: chain({"backend": "dexed", "name": "dx", "options": {"notes": [[60, 100]], "note_duration_seconds": 0.3},
                                   "learn": [f"op{k}_output_level" for k in range(1, 7)]}, sample_rate=16000), 1),
}


_MRSTFT = MultiResolutionSTFTLoss(fft_sizes=(1024, 256, 64))


def _loss(y, t):
    return _MRSTFT(y.float(), t.float())


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_through_real_plugin_points_downhill(case):
    path, make, channels = CASES[case]
    if path is not None and not os.path.exists(path):
        pytest.skip(f"{path} not installed (scripts/install.sh installs it)")
    spec = make()
    n = 8000 if spec.sample_rate == 16000 else 8192
    x = torch.from_numpy(music_like(np.random.default_rng(1), channels, n, int(spec.sample_rate)))[None]
    with FxLayer(spec, batch_size=1, num_workers=1, num_perturbations=4, epsilon=0.02, seed=0) as fx:
        p = fx.num_params
        g = torch.Generator().manual_seed(4)
        theta_star = torch.rand(1, p, generator=g) * 0.6 + 0.2
        theta0 = (theta_star + 0.15 * (torch.rand(1, p, generator=g) * 2 - 1)).clamp(0, 1)

        def render(theta, grad=False):
            fx.reset()
            t = theta.clone().requires_grad_(grad)
            return fx(x, t) if grad else fx.render(x, t), t

        target = render(theta_star)[0]
        l0 = _loss(render(theta0)[0], target).item()
        grads = []
        for _ in range(3):
            y, t = render(theta0, grad=True)
            _loss(y, target).backward()
            grads.append(t.grad)
        gsp = torch.stack(grads).mean(0)
    assert torch.isfinite(gsp).all() and gsp.abs().sum() > 0
    step = 0.1 * gsp / gsp.norm()
    l1 = _loss(render_fresh(spec, x, (theta0 - step).clamp(0, 1)), target).item()
    assert l1 < l0, f"{case}: loss {l0:.3g} → {l1:.3g} after a step along −g"


def render_fresh(spec, x, theta):
    with FxLayer(spec, batch_size=1, num_workers=1) as fx:
        return fx.render(x, theta)
