"""Best of N through the real bot (``easel bot --sync`` in its own process) and the
loopback Discord stand-in: without a CLIP model the option is not offered and ``--best``
is refused in words; with one, ``best_of:4`` posts the candidate CLIP ranks first.

The ranking is recomputed here, independently: the same request as a plain batch of 4
(``count:4``, same seed) shows the four candidates; the tiny ranker CLIP
(``tests/helpers/tiny_clip.py``) scores them with transformers' own image processor."""

from __future__ import annotations

import io
import json
import re
import sqlite3

import numpy as np
import pytest
from helpers.tiny_clip import RANKER, independent_scores, load_ranker, write_tiny_clip
from PIL import Image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

PROMPT = "a lighthouse at dawn"


def mark(server) -> int:
    return max((int(m["id"]) for m in server.bot_messages()), default=0)


def results_after(server, after: int) -> list[dict]:
    return [
        m
        for m in server.bot_messages()
        if int(m["id"]) > after and m.get("attachments") and "#" in m["content"]
    ]


def result_of(server, log, after: int) -> dict:
    try:
        server.wait_for(
            lambda: results_after(server, after) or "⚠️" in log.last_text, 90, "a result"
        )
    except TimeoutError:
        raise AssertionError(f"no result: {log.edits}") from None
    assert "⚠️" not in log.last_text, log.last_text
    return results_after(server, after)[0]


def refused(server, log) -> str:
    server.wait_for(lambda: "⚠️" in log.last_text, 30, "the refusal")
    return log.last_text


def generation_id(message: dict) -> int:
    return int(re.search(r"#(\d+)\s*$", message["content"].split("\n")[0])[1])


def pixels(server, message: dict) -> list[np.ndarray]:
    """The message's images, in attachment order, as uint8 arrays."""
    out = []
    for attachment in message["attachments"]:
        data = server.files[attachment["url"].rsplit("/", 1)[1]]
        with Image.open(io.BytesIO(data)) as image:
            out.append(np.asarray(image.convert("RGB")).copy())
    return out


def imagine_options(server) -> dict[str, dict]:
    command = next(c for c in server.commands["global"] if c["name"] == "imagine")
    return {o["name"]: o for o in command["options"]}


def stored_parameters(data_dir, generation: int) -> dict:
    con = sqlite3.connect(data_dir / "easel.sqlite3")
    try:
        (row,) = con.execute("SELECT parameters FROM generations WHERE id = ?", (generation,))
    finally:
        con.close()
    return json.loads(row[0])


def test_without_a_clip_model_best_of_is_not_offered(server, make_bot):
    server.commands.pop("global", None)
    bot = make_bot("--sync")
    try:
        server.wait_for(lambda: "global" in server.commands, 30, "the command sync")
        options = imagine_options(server)
        assert "count" in options and "best_of" not in options and "keep" not in options
        log = server.slash("imagine", {"prompt": f"{PROMPT} --best 4"})
        text = refused(server, log)
        assert "Best of N needs a CLIP model" in text and "has not set one" in text
    finally:
        bot.stop()


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory):
    """A models folder holding the tiny ranker CLIP, as an owner would place one."""
    root = tmp_path_factory.mktemp("clip-models")
    write_tiny_clip(root)
    return root


@pytest.fixture(scope="module")
def bot(server, make_bot, clip_models):
    server.commands.pop("global", None)
    started = make_bot("--sync", easel_clip_model=RANKER, easel_extra_model_dirs=str(clip_models))
    server.wait_for(lambda: "global" in server.commands, 30, "the command sync")
    return started


@pytest.fixture(scope="module")
def candidates(server, bot) -> list[np.ndarray]:
    """The four candidates of ``PROMPT`` at seed 11: the same request as a plain batch."""
    before = mark(server)
    log = server.slash("imagine", {"prompt": PROMPT, "seed": 11, "count": 4, "size": "64x64"})
    return pixels(server, result_of(server, log, before))


@pytest.fixture(scope="module")
def scores(candidates, clip_models, cache_folder) -> list[float]:
    ranker = load_ranker(clip_models / "clip" / RANKER)
    found = independent_scores(ranker, np.stack(candidates), PROMPT, cache_folder)
    ordered = sorted(found, reverse=True)
    assert ordered[0] - ordered[1] > 0.3, f"too close to rank: {found}"
    return found


def test_best_of_is_declared_up_to_the_image_limit(server, bot):
    options = imagine_options(server)
    assert (options["best_of"]["min_value"], options["best_of"]["max_value"]) == (2, 4)
    assert options["keep"]["max_value"] == 4


def test_best_of_4_posts_the_candidate_clip_ranks_first(server, bot, candidates, scores):
    before = mark(server)
    log = server.slash("imagine", {"prompt": PROMPT, "seed": 11, "best_of": 4, "size": "64x64"})
    message = result_of(server, log, before)
    best = max(range(4), key=lambda i: scores[i])
    assert best != 0, "seed 11 should not make the first candidate the best (a weak test)"
    (posted,) = pixels(server, message)
    assert np.array_equal(posted, candidates[best])
    assert "Best 1 of 4 by CLIP score" in message["content"]

    # Details: every candidate's score, the posted one marked.
    gen = generation_id(message)
    details = server.click(message, f"easel:info:{gen}")
    server.wait_for(lambda: details.edits, 20, "the details")
    (embed,) = details.edits[-1]["embeds"]
    (field,) = [f for f in embed["fields"] if f["name"].startswith("Best of")]
    shown = {int(i): float(s) for i, s in re.findall(r"image (\d+): ([\d.]+)", field["value"])}
    assert sorted(shown) == [1, 2, 3, 4]
    assert np.allclose([shown[i + 1] for i in range(4)], scores, atol=0.3)
    assert re.search(rf"★ image {best + 1}: ", field["value"])
    assert field["value"].count("★") == 1 and "seed 11" in field["value"]

    # The history keeps what was posted and every candidate's score and seed.
    params = stored_parameters(bot.data_dir, gen)
    assert params["best_of"] == 4 and params["batch_size"] == 1
    assert params["best_of_result"]["kept"] == [best]
    assert params["best_of_result"]["seed"] == 11 and len(params["best_of_result"]["scores"]) == 4


def test_inline_best_and_keep_post_the_top_two_best_first(server, bot, candidates, scores):
    before = mark(server)
    log = server.slash(
        "imagine", {"prompt": f"{PROMPT} --best 4 --keep 2 --seed 11", "size": "64x64"}
    )
    message = result_of(server, log, before)
    top = sorted(range(4), key=lambda i: -scores[i])[:2]
    posted = pixels(server, message)
    assert len(posted) == 2
    for image, index in zip(posted, top, strict=True):
        assert np.array_equal(image, candidates[index])
    assert "Best 2 of 4 by CLIP score" in message["content"]


def test_reroll_ranks_again_and_a_variation_is_of_the_image_chosen(server, bot, scores):
    before = mark(server)
    log = server.slash("imagine", {"prompt": PROMPT, "seed": 11, "best_of": 4, "size": "64x64"})
    message = result_of(server, log, before)
    gen = generation_id(message)
    before = mark(server)
    server.click(message, f"easel:reroll:{gen}")
    rerolled = server.wait_for(
        lambda: next(iter(results_after(server, before)), None), 90, "the reroll"
    )
    assert "Best 1 of 4 by CLIP score" in rerolled["content"]
    params = stored_parameters(bot.data_dir, generation_id(rerolled))
    assert params["best_of"] == 4 and params["best_of_result"]["seed"] != 11
    before = mark(server)
    server.click(message, f"easel:var:{gen}")
    variation = server.wait_for(
        lambda: next(iter(results_after(server, before)), None), 90, "the variation"
    )
    assert len(variation["attachments"]) == 1 and "Best" not in variation["content"]
    params = stored_parameters(bot.data_dir, generation_id(variation))
    assert params["best_of"] is None and "best_of_result" not in params
    assert params["init_image"]  # made from the posted (chosen) image


def test_best_of_counts_against_the_image_limit(server, bot):
    log = server.slash("imagine", {"prompt": f"{PROMPT} --best 5"})
    assert "est of 5 is more than your limit of 4 images at once" in refused(server, log)
