"""Issue 13's rough edges that live in the service layer: every bad option at once, the
sampler/scheduler pair, the wait estimate, pip failures in words, a junk LoRA header."""

from __future__ import annotations

import pytest

from bot.services import lora_files as lf
from bot.services.jobs.estimates import MonotoneWaits, jobs_ahead, median
from bot.services.parsing import ParseError, ParseErrors
from bot.services.plugins.pip_words import pip_in_words
from bot.services.request_builder import build_request
from runner.diffusion.samplers import SAMPLERS, SCHEDULERS, check_combination, supported_schedulers


def names() -> dict:
    return {"samplers": set(SAMPLERS), "schedulers": set(SCHEDULERS)}


# 7: several bad values, all reported -------------------------------------------------------


def test_several_bad_values_are_all_reported_each_in_words():
    with pytest.raises(ParseErrors) as info:
        build_request(
            "a cat --steps 500 --cfg 99 --bogus 1",
            options={"sampler": "nope", "count": 9},
            has_image=False,
            **names(),
        )
    problems = info.value.problems
    assert len(problems) == 5, problems
    joined = " | ".join(problems)
    for needle in ("steps 500", "cfg must be", "--bogus", "'nope'", "count 9"):
        assert needle in joined


def test_a_bad_sampler_lists_every_name_or_says_how_many_more():
    with pytest.raises(ParseError) as info:
        build_request("a cat --sampler nope", **names())
    text = str(info.value)
    listed, _, rest = text.partition("try ")[2].partition(" and ")
    shown = listed.rstrip(".").split(", ")
    more = int(rest.split()[0]) if rest else 0
    assert set(shown) <= set(SAMPLERS) and len(shown) + more == len(SAMPLERS)


def test_strength_without_an_image_is_an_error_not_ignored():
    with pytest.raises(ParseError, match="strength only applies"):
        build_request("a cat --strength 0.4", has_image=False)
    with pytest.raises(ParseError, match="strength only applies"):
        build_request("a cat", options={"strength": 0.4}, has_image=False)
    assert build_request("a cat --strength 0.4", has_image=True).strength == 0.4
    assert build_request("a cat", has_image=False).prompt == "a cat"  # default: no problem


# 2: pairs -----------------------------------------------------------------------------------


def test_every_unfit_pair_is_refused_in_words_and_every_fit_pair_passes():
    for sampler in SAMPLERS:
        for scheduler in SCHEDULERS:
            text = f"a cat --sampler {sampler} --scheduler {scheduler}"
            if check_combination(sampler, scheduler) is None:
                assert build_request(text, **names()).scheduler == scheduler
                continue
            with pytest.raises(ParseError) as info:
                build_request(text, **names())
            message = str(info.value)
            assert sampler in message and scheduler in message and "diffusers" not in message
            assert all(s in message for s in supported_schedulers(sampler))


# 12: the wait estimate ----------------------------------------------------------------------


class Running:
    def __init__(self, step: int, total: int):
        self.step, self.total = step, total


def test_the_wait_never_grows_while_the_place_falls():
    """A job at place 3 moves to 2 and 1 while slower jobs finish: the raw estimate
    (place x median job time) would grow; what is shown does not."""
    waits = MonotoneWaits()
    times = [2.0]
    shown = []
    for place, finished in ((3, None), (2, 9.0), (1, 9.0)):
        if finished:
            times.append(finished)
        raw = jobs_ahead(place, [Running(1, 4)]) * median(times)
        shown.append(waits.shown("j", place, raw))
    raws = [
        jobs_ahead(3, [Running(1, 4)]) * 2.0,
        jobs_ahead(2, [Running(1, 4)]) * 9.0,
        jobs_ahead(1, [Running(1, 4)]) * 9.0,
    ]
    assert raws[1] > raws[0]  # the raw estimate grew...
    assert shown == sorted(shown, reverse=True)  # ...what is shown did not
    # A job pushed back (someone with priority came in ahead) may be told a longer wait.
    assert waits.shown("j", 4, 100.0) == 100.0


def test_jobs_ahead_counts_waiting_jobs_and_what_is_left_of_running_ones():
    assert jobs_ahead(1, []) == 0
    assert jobs_ahead(3, []) == 2
    assert jobs_ahead(2, [Running(3, 4), Running(0, 0)]) == pytest.approx(1 + 0.25 + 1)


# 12: pip failures for owners ----------------------------------------------------------------

NO_SUCH = """Looking in indexes: http://127.0.0.1:3141/root/pypi/+simple/
Looking in links: /srv/easel/wheels
ERROR: Could not find a version that satisfies the requirement easel-nope (from versions: none)
ERROR: No matching distribution found for easel-nope
"""

BUILD = """Processing /home/owner/plugins/easel-x
  error: subprocess-exited-with-error
  × python setup.py bdist_wheel did not run successfully.
ERROR: Failed to build easel-x
"""

OTHER = "ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/usr/lib/python3/site-packages/x'"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            NO_SUCH,
            "no package easel-nope was found on the package index "
            "(pip: No matching distribution found for easel-nope)",
        ),
        (BUILD, "easel-x failed to build"),
    ],
)
def test_pip_failures_read_as_words_without_urls_or_paths(output, expected):
    assert pip_in_words(output) == expected


def test_an_unknown_pip_error_keeps_its_words_but_not_its_paths():
    words = pip_in_words(OTHER)
    assert "Permission denied" in words and "/usr/lib" not in words


def test_pip_failed_message_is_the_words():
    from bot.services.plugins.pip import PipRun

    run = PipRun(["pip"], 1, "", NO_SUCH, 0.1)
    with pytest.raises(Exception) as info:
        run.check("easel-nope")
    text = str(info.value)
    assert "no package easel-nope" in text
    assert "http://" not in text and "/srv/" not in text and "\n" not in text
    assert "No matching distribution" in info.value.summary  # kept for the log and the audit


# 9: a junk LoRA header -----------------------------------------------------------------------


def test_a_file_whose_header_claims_an_absurd_size_is_not_a_lora(tmp_path):
    junk = (7021991845529153390).to_bytes(8, "little") + b"{}" * 40
    with pytest.raises(lf.HeaderTooLarge) as info:
        lf.stage_lora_upload(junk, "Junk.safetensors", tmp_path, max_bytes=10**6)
    text = str(info.value)
    assert text.startswith("Junk.safetensors: ") and "not a LoRA file" in text
    assert "7021991845529153390" not in text
