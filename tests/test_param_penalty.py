"""``train.param_l2``: the penalty toward the defaults that keeps SPSA's noise from walking parameters to
their bounds. Its value, its exact gradient, and the level-relative gain it leaves alone."""

from __future__ import annotations

import types

import pytest
import torch

from deepafx.automation.task import AutomationTask


def _task(lam: float, relative: int | None = None) -> AutomationTask:
    task = AutomationTask.__new__(AutomationTask)
    task.settings = types.SimpleNamespace(param_l2=lam)
    task.defaults = torch.tensor([0.5, 0.2, 0.8])
    task.model = types.SimpleNamespace(relative_index=relative)
    return task


def test_penalty_value_and_gradient():
    params = torch.tensor([[0.7, 0.2, 0.8], [0.5, 0.5, 0.8], [0.0, 0.0, 0.0]], requires_grad=True)
    active = torch.tensor([True, True, False])  # an idle slot does not count
    pen = _task(2.0)._param_penalty(params, active)
    assert pen.item() == pytest.approx(2.0 * (0.04 + 0.09) / 2)
    pen.backward()
    expected = 2.0 * 2 * (params.detach() - torch.tensor([0.5, 0.2, 0.8])) / 2
    expected[2] = 0
    assert torch.allclose(params.grad, expected)


def test_level_relative_gain_is_exempt_and_zero_weight_is_off():
    params = torch.tensor([[0.5, 0.2, 0.1]], requires_grad=True)
    assert _task(1.0, relative=2)._param_penalty(params, torch.tensor([True])).item() == 0.0
    assert _task(0.0)._param_penalty(params, torch.tensor([True])).item() == 0.0
