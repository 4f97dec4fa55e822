"""benchmarks/amp_choices.py: discrete amp settings chosen on the validation split, never the test split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "amp_choices.py"


def _module():
    from conftest import load_script

    return load_script("amp_choices")


def test_values_parse_ranges_and_numbers():
    parse = _module().parse_values
    assert parse("0-3,7") == [0, 1, 2, 3, 7]
    assert parse("0.5, 2") == [0.5, 2.0]
    for bad in ("", "a-b", "1-"):
        with pytest.raises(SystemExit):
            parse(bad)


def test_the_test_split_is_refused():
    out = subprocess.run([sys.executable, str(SCRIPT), "--split", "test", "--choice", "model", "14"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "validation split" in out.stderr


@pytest.mark.slow
def test_a_choice_is_searched_per_piece_on_validation(tmp_path):
    """Two tube models of guitarix on a tiny rendered dataset: every validation piece searched on its own,
    the winner the lowest mean."""
    from deepafx.chain import ChainSpec
    from deepafx.hosts.base import PluginError

    try:
        ChainSpec.from_file(REPO / "plugins" / "chains" / "guitarix_amp.yaml").build().close()
    except PluginError as exc:
        pytest.skip(f"guitarix LV2 amp not installed (Debian: guitarix-lv2): {exc}")
    if not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").is_file():
        pytest.skip("FluidR3_GM SoundFont not installed (Debian: fluid-soundfont-gm)")
    sets = ["data.train_minutes=0.3", "data.max_piece_seconds=6", "data.min_piece_seconds=3",
            "data.valid_fraction=0.3", "render.num_workers=1"]
    args = [sys.executable, str(SCRIPT), "--config", "amp_emulation/quick_gx", "--data-dir", str(tmp_path / "data"),
            "--choice", "model", "10,14", "--renders", "5", "--excerpt-seconds", "1"]
    out = subprocess.run(args + [x for s in sets for x in ("--set", s)], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    tried = r["tried"]["model"]
    assert r["split"] == "valid" and set(tried) == {"10", "14"} and len(r["pieces"]) >= 1
    for v in tried.values():
        assert len(v["per_piece"]) == len(r["pieces"]) and v["objective"] == pytest.approx(sum(v["per_piece"]) / len(r["pieces"]))
        # each search starts from the knobs' defaults and keeps its best
        assert all(o <= d + 1e-9 for o, d in zip(v["per_piece"], v["default_per_piece"]))
    assert r["best"]["model"] == float(min(tried, key=lambda k: tried[k]["objective"]))
    # --chain: another amp plugin's chain file on the same data, scored as configured (knobs per piece)
    out = subprocess.run([sys.executable, str(SCRIPT), "--config", "amp_emulation/quick_gx", "--data-dir",
                          str(tmp_path / "data"), "--chain", "guitarix_metal_head", "--renders", "5",
                          "--excerpt-seconds", "1"] + [x for s in sets for x in ("--set", s)],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["chain"] == "guitarix_metal_head"
    scored = r["tried"]["config"]["as configured"]
    assert set(scored["knobs"][0]) == {"boost.gain_db", "amp.tone", "amp.drive", "amp.pregain", "amp.gain1", "out.gain_db"}
    assert all(o <= d + 1e-9 for o, d in zip(scored["per_piece"], scored["default_per_piece"]))
