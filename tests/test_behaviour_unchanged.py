"""The redesign's promise (issue 13): the same numbers. Seven tiny runs (PPO, DQN, stateful and
optimizer-replacing strategy sets, the monitor on) give bitwise the scalars, histograms, final
checkpoint and spectra recorded in tests/golden/behaviour.json before the packages moved."""

import json

import pytest

from tests.behaviour import GOLDEN, RUNS, platform_key, record

GOLDEN_DATA = json.loads(GOLDEN.read_text())


@pytest.mark.skipif(GOLDEN_DATA["platform"] != platform_key(),
                    reason=f"recorded on {GOLDEN_DATA['platform']}; floats differ across kernels")
@pytest.mark.parametrize("name", list(RUNS))
def test_run_matches_golden_bitwise(name):
    expected, got = GOLDEN_DATA["runs"][name], record([name])[name]
    for part in ("checkpoint", "scalars", "histograms", "spectra"):
        moved = sorted(k for k in expected[part].keys() | got[part].keys()
                       if expected[part].get(k) != got[part].get(k))
        assert not moved, f"{name}: {part} changed: {moved[:8]}"
