"""A reduced fault run (bench/fault_run.py): a real ``easel bot`` against the loopback
Discord stand-in, SIGKILLed at random moments (one of them with a result in the channel
the bot never heard back about) and restarted each time, with the stand-in forgetting
nonces before each restart: no job is lost, posted twice or never posted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fault_run.py"


def load():
    spec = importlib.util.spec_from_file_location("fault_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_reduced_fault_run_loses_doubles_and_skips_nothing(tmp_path, cache_folder):
    fault_run = load()
    figures = fault_run.run(
        jobs=9,
        users=3,
        kills=4,
        seed=3,
        root=tmp_path / "run",
        cache=cache_folder,
        settle_s=300,
        moments=["held_post", "after_post", "sampling"],  # the hardest, then one at random
    )
    assert figures["kills"] == 4 and figures["starts"] == 5, figures
    assert figures["jobs_stored"] >= figures["jobs_accepted"] > 0, figures
    assert (figures["lost"], figures["doubled"], figures["never_posted"]) == (0, 0, 0), figures
    assert figures["statuses_not_final"] == 0, figures  # none left "Queued" by a killed run
