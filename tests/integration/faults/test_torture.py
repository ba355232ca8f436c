"""The randomized fault run (tests/harness/torture.py) with a fixed seed, short: operations and faults of
every kind mixed, then every checker must find nothing. `make torture SEED=… DURATION=…` runs it longer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.common import progress
from tests.harness.torture import TortureConfig, run

pytestmark = pytest.mark.integration

SEED = 8
DURATION = 30.0
# Many keys: each is one more chance for the known defects to show in 30 s (with 6 keys a run came out
# clean once in three, and a strict xfail must fail every time until the fixes are merged).
KEYS = 16


@pytest.mark.xfail(
    strict=True,
    reason="issue 8 defect 1: fixed on h/relcore (a replica rebuilt from the compacted log loses "
    "acknowledged conditional writes and resurrects deleted conditional values; defects 2 and 3 "
    "show too when the mix hits them)",
)
def test_short_fixed_seed_torture_finds_no_violation(pytestconfig: pytest.Config, tmp_path: Path) -> None:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():  # progress and the verdicts on the terminal
        report = run(TortureConfig(seed=SEED, duration=DURATION, keys=KEYS, workdir=tmp_path / "torture"))
        progress("\n" + report.render())
    assert not report.errors, report.render()
    counts = report.history.counts()
    assert counts["faults"] > 0 and counts["ok"] > 0 and counts["watch_deliveries"] > 0, counts
    assert all(v.checked > 0 for v in report.verdicts), report.render()
    assert report.ok, report.render()
