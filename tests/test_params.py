import numpy as np
import pytest

from deepafx.params import Param, ParamTable, ParameterError


def table():
    return ParamTable((
        Param("threshold_db", -60, 0, -12, "dB"),
        Param("attack_ms", 0.1, 100, 5, "ms", "log"),
        Param("mode", 0, 3, 1, values=(0, 1, 2, 3)),
    ))


def test_round_trip_and_scales():
    t = table()
    x = np.array([0.25, 0.5, 1 / 3])
    v = t.denormalize(x)
    assert v[0] == pytest.approx(-45.0)
    assert v[1] == pytest.approx(np.sqrt(0.1 * 100))  # log midpoint = geometric mean
    assert v[2] == 1.0
    np.testing.assert_allclose(t.normalize(v), x, atol=1e-12)
    np.testing.assert_allclose(t.denormalize(t.defaults_normalized()), t.defaults(), rtol=1e-12)


def test_batched_denormalize_shape():
    t = table()
    x = np.random.default_rng(0).random((5, 7, 3))
    assert t.denormalize(x).shape == (5, 7, 3)


@pytest.mark.parametrize("bad", [1.2, -0.1, np.nan, np.inf])
def test_out_of_range_normalized_names_param(bad):
    with pytest.raises(ParameterError, match="attack_ms"):
        table().denormalize([0.5, bad, 0.5])


def test_out_of_range_value_names_param_and_range():
    with pytest.raises(ParameterError, match=r"threshold_db.*\[-60"):
        table().normalize([10.0, 5.0, 1.0])


def test_unknown_name_lists_known():
    with pytest.raises(ParameterError, match="known parameters: threshold_db, attack_ms, mode"):
        table().index("ratio")


def test_narrow_and_fixed_mapping():
    t = table().narrowed({"threshold_db": (-30, -10), "mode": (1, 2)})
    assert (t["threshold_db"].min, t["threshold_db"].max, t["threshold_db"].default) == (-30, -10, -12)
    assert t["mode"].values == (1.0, 2.0)
    assert t.denormalize([0.0, 0.0, 1.0])[0] == -30
    with pytest.raises(ParameterError, match="inside"):
        table().narrowed({"threshold_db": (-90, 0)})
    v = table().values_from_mapping({"attack_ms": 20})
    assert list(v) == [-12, 20, 1]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="a", min=1, max=0, default=0.5), "min < max"),
    (dict(name="a", min=0, max=1, default=2), "default"),
    (dict(name="a", min=0, max=1, default=0.5, scale="log"), "log scale"),
    (dict(name="a", min=0, max=1, default=0.5, scale="cubic"), "scale"),
])
def test_bad_declarations(kwargs, msg):
    with pytest.raises(ParameterError, match=msg):
        Param(**kwargs)
