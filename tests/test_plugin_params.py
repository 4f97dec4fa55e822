"""Value maps, names and parameter-map selection (no plugin needed)."""

from __future__ import annotations

import numpy as np
import pytest

from deepafx.hosts.base import PluginError
from deepafx.hosts.plugin_params import (
    DiscoveredParam,
    ParamMap,
    ValueMap,
    build_table,
    is_meter_name,
    parse_number,
    sanitize_name,
    unique_names,
)
from deepafx.params import ParameterError

GRID = np.linspace(0.0, 1.0, 1001)


def test_parse_number_reads_plugin_display_texts():
    assert [parse_number(t) for t in ("-12.00", "80.000000", "20 Hz", "-inf", "1e3")] == [-12.0, 80.0, 20.0,
                                                                                         -np.inf, 1000.0]
    assert parse_number("RMS") is None and parse_number("12 dB/o") is None
    assert parse_number(True) == 1.0


def test_linear_display_gives_an_exact_linear_map():
    texts = [f"{-80 + 80 * r:.6f}" for r in GRID]  # DPF threshold: -80 .. 0 dB
    vm = ValueMap.from_samples(GRID, texts)
    assert vm.linear is not None and not vm.discrete
    assert (vm.min, vm.max) == (-80.0, 0.0)
    assert vm.to_raw(-20.0) == pytest.approx(0.75, abs=1e-9)
    assert vm.to_raw(-100.0) == 0.0 and vm.to_raw(5.0) == 1.0  # clipped to the range
    assert vm.to_value(0.75) == pytest.approx(-20.0, abs=1e-6)


def test_curved_display_is_inverted_by_interpolation():
    # An LSP-like time control: 0 .. 2000 ms on a curve, shown with 3 significant digits.
    values = 2000 * GRID**4
    texts = [f"{v:.3g}" for v in values]
    vm = ValueMap.from_samples(GRID, texts)
    assert vm.linear is None and (vm.min, vm.max) == (0.0, 2000.0)
    for target in (0.5, 20.0, 372.0, 1500.0):
        raw = vm.to_raw(target)
        assert 2000 * raw**4 == pytest.approx(target, rel=0.01)


def test_minus_inf_is_dropped_and_decreasing_maps_work():
    texts = ["-inf"] + [f"{-60 + 80 * r:.2f}" for r in GRID[1:]]
    vm = ValueMap.from_samples(GRID, texts)
    assert vm.min == pytest.approx(-59.92) and vm.max == 20.0
    down = ValueMap.from_samples(GRID, [f"{100 - 90 * r:.4f}" for r in GRID])
    assert (down.min, down.max) == (10.0, 100.0)
    assert down.to_raw(55.0) == pytest.approx(0.5, abs=1e-6)


def test_text_labels_become_an_enum_and_few_numbers_become_discrete():
    labels = ["Peak"] * 250 + ["RMS"] * 250 + ["LPF"] * 250 + ["SMA"] * 251
    vm = ValueMap.from_samples(GRID, labels)
    assert vm.discrete and vm.values == (0.0, 1.0, 2.0, 3.0) and vm.labels == ("Peak", "RMS", "LPF", "SMA")
    assert vm.to_raw(2.0) == pytest.approx(0.6245, abs=1e-3)  # middle of the "LPF" run
    assert vm.to_raw(2.4) == vm.to_raw(2.0)  # snaps to the nearest valid value
    switch = ValueMap.from_samples(GRID, ["0.000000"] * 501 + ["1.000000"] * 500)
    assert switch.discrete and switch.values == (0.0, 1.0)
    assert ValueMap.from_samples(GRID, ["on"] * 1001) is None  # never changes: no usable range
    assert ValueMap.from_samples(GRID, ["a"] * 300 + ["b"] * 400 + ["a"] * 301) is None  # ambiguous order


def test_identity_map_passes_real_values_through():
    vm = ValueMap.identity(20.0, 20000.0)  # Faust: the host takes plugin units
    assert vm.to_raw(1000.0) == 1000.0 and vm.to_raw(5.0) == 20.0 and vm.to_raw(1e6) == 20000.0


def test_names_carry_units_and_stay_unique():
    assert sanitize_name("Dry Level", "%") == "dry_level_pct"
    assert sanitize_name("Threshold 1", "dB") == "threshold_1_db"
    assert sanitize_name("attack_ms", "ms") == "attack_ms"
    assert unique_names(["crossover_freq_hz", "crossover_freq_hz", "x"]) == [
        "crossover_freq_hz", "crossover_freq_hz_2", "x"]
    assert is_meter_name("gain_reduction_1_db") and is_meter_name("output_level_db")
    assert is_meter_name("meter_in_db") and is_meter_name("vu_meter")
    assert not is_meter_name("threshold_db") and not is_meter_name("output_gain_db")
    assert not is_meter_name("diameter_m")


def _discovered() -> list[DiscoveredParam]:
    lin = ValueMap.from_samples(GRID, [f"{-60 + 60 * r:.6f}" for r in GRID])
    ms = ValueMap.from_samples(GRID, [f"{0.1 + 99.9 * r:.6f}" for r in GRID])
    hz = ValueMap.from_samples(GRID, [f"{20 + 19980 * r:.3f}" for r in GRID])
    return [
        DiscoveredParam("buffer_size_frames", "buffer_size_frames", "frames", lin, -10.0),
        DiscoveredParam("threshold_db", "threshold_db", "dB", lin, -20.0),
        DiscoveredParam("attack_ms", "attack_ms", "ms", ms, 10.0),
        DiscoveredParam("cutoff_hz", "cutoff_hz", "Hz", hz, 1000.0),
        DiscoveredParam("gain_reduction_db", "gain_reduction_db", "dB", lin, 0.0),  # automatable meter
        DiscoveredParam("level_out_db", "level_out_db", "dB", lin, 0.0, automatable=False),
    ]


def test_build_table_applies_the_exclusion_rules_and_default_scales():
    table, bindings = build_table(_discovered())
    assert table.names == ["threshold_db", "attack_ms", "cutoff_hz"]
    assert [b.source.key for b in bindings] == table.names
    assert table["attack_ms"].scale == "log" and table["cutoff_hz"].scale == "log"
    assert table["threshold_db"].scale == "linear" and table["threshold_db"].default == -20.0


def test_parameter_map_selects_renames_and_narrows(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(
        "only_listed: true\n"
        "params:\n"
        "  cutoff_hz: {name: tone_hz, min: 100, max: 8000}\n"
        "  threshold_db: {name: thresh_db, default: -30}\n"
    )
    table, bindings = build_table(_discovered(), ParamMap.load(path))
    assert table.names == ["tone_hz", "thresh_db"]  # listed order
    assert (table["tone_hz"].min, table["tone_hz"].max, table["tone_hz"].default) == (100.0, 8000.0, 1000.0)
    assert table["thresh_db"].default == -30.0
    assert bindings[0].source.key == "cutoff_hz"


def test_parameter_map_errors_name_the_problem(tmp_path):
    wide = tmp_path / "wide.yaml"
    wide.write_text("params:\n  threshold_db: {min: -90}\n")
    with pytest.raises(ParameterError, match=r"threshold_db.*inside the plugin's \[-60.0, 0.0\]"):
        build_table(_discovered(), ParamMap.load(wide))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("exclude: [nope]\n")
    with pytest.raises(ParameterError, match="nope.*known parameters: .*threshold_db"):
        build_table(_discovered(), ParamMap.load(unknown))
    typo = tmp_path / "typo.yaml"
    typo.write_text("parms: {}\n")
    with pytest.raises(PluginError, match="unknown keys \\['parms'\\]"):
        ParamMap.load(typo)
    with pytest.raises(PluginError, match="tried: .*param_maps/missing.yaml"):
        ParamMap.load("missing.yaml")
