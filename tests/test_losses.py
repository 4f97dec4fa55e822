import numpy as np
import pytest
import torch

from deepafx.losses import DelayInvariantLoss, MultiResolutionSTFTLoss, estimate_lag

from conftest import music_like


def _signals(rng, n=16384):
    x = torch.from_numpy(music_like(rng, 2, n))
    return x[None].repeat(3, 1, 1) * torch.tensor([1.0, 0.5, 2.0])[:, None, None]


def _delay(x, d):
    return torch.nn.functional.pad(x, (d, 0))[..., : x.shape[-1]]


@pytest.mark.parametrize("delay", [0, 1, 37, 250])
@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_delayed_inverted_copy_scores_near_zero(rng, delay, polarity):
    x = _signals(rng)
    loss = DelayInvariantLoss(max_delay_samples=300, reduction="none")
    est = polarity * _delay(x, delay)
    assert estimate_lag(est, x, 300).tolist() == [delay] * 3
    assert loss(est, x).max().item() < 1e-5
    unrelated = torch.from_numpy(music_like(np.random.default_rng(9), 2, x.shape[-1]))[None].repeat(3, 1, 1)
    assert loss(unrelated * 0.7, x).min().item() > 1.0
    # without alignment a 37-sample delay is heavily penalized by a plain L1
    if delay >= 37:
        assert (est - x).abs().mean().item() * 10 > 0.1


def test_lag_beyond_bound_is_not_found(rng):
    x = _signals(rng)
    assert DelayInvariantLoss(max_delay_samples=10)(_delay(x, 200), x).item() > 0.5


def test_gradient_flows_and_for_latency(rng):
    x = _signals(rng)
    est = (0.5 * _delay(x, 12)).requires_grad_(True)
    loss = DelayInvariantLoss.for_latency(latency_samples=64, sample_rate=44100, margin_ms=1.0)
    assert loss.max_delay_samples == 64 + 44
    loss(est, x).backward()
    assert est.grad.abs().sum().item() > 0


@pytest.mark.parametrize("loss", [DelayInvariantLoss(max_delay_samples=64), MultiResolutionSTFTLoss()])
def test_gradients_finite_for_perfect_match_and_silence(rng, loss):
    x = _signals(rng, 4096)
    for est, ref in ((x.clone(), x), (torch.zeros_like(x), torch.zeros_like(x))):
        est.requires_grad_(True)
        loss(est, ref).backward()
        assert torch.isfinite(est.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="too short"):
        DelayInvariantLoss(max_delay_samples=100)(torch.zeros(1, 1, 150), torch.zeros(1, 1, 150))
    with pytest.raises(ValueError, match="equal shape"):
        DelayInvariantLoss()(torch.zeros(1, 1, 5000), torch.zeros(1, 2, 5000))


def test_mrstft_identity_monotone_and_gain(rng):
    x = _signals(rng)
    mr = MultiResolutionSTFTLoss(reduction="none")
    assert mr(x, x).abs().max().item() == 0.0
    noise = torch.randn_like(x)
    a, b = mr(x + 0.01 * noise, x), mr(x + 0.1 * noise, x)
    assert (b > a).all()
    # a pure gain change of g gives a log term of |log g| at every bin (6 sizes)
    only_log = MultiResolutionSTFTLoss(log_weight=1.0, eps=0.0)
    lin_free = only_log(2 * x, x) - MultiResolutionSTFTLoss(log_weight=0.0, eps=0.0)(2 * x, x)
    assert lin_free.item() == pytest.approx(6 * np.log(2), rel=1e-3)
