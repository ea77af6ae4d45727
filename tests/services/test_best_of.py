"""Best of N in the service layer: the request (options, inline ``--best``, limits, no CLIP
model), one job that makes N candidates in one batch and keeps what CLIP ranks first,
the ranking stored with the generation, and reroll/reuse seed remaking the same choice.

The CLIP model is the tiny ranker of ``tests/helpers/tiny_clip.py`` in the data folder's
``models/clip``; its ranking is recomputed here with transformers' own image processor."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.tiny_clip import RANKER, as_uint8, independent_scores, load_ranker, write_tiny_clip

from bot.services import best_of
from bot.services.generation import request_from_generation
from bot.services.parsing import Limits, ParseError
from bot.services.request_builder import build_request
from db.engine import Database
from db.models import Generation
from runner.templates import GenerationRequest

USER = 7

# -- the request ---------------------------------------------------------------------------


def test_best_of_from_the_option_or_inline_keeps_one_by_default():
    inline = build_request("a fox --best 4", clip_model=RANKER)
    assert (inline.best_of, inline.batch_size, inline.best_of_clip) == (4, 1, RANKER)
    slash = build_request("a fox --best 2", options={"best_of": 3, "keep": 2}, clip_model=RANKER)
    assert (slash.best_of, slash.batch_size) == (3, 2)  # the slash option wins
    counted = build_request("a fox --best 4 --count 3", clip_model=RANKER)
    assert (counted.best_of, counted.batch_size) == (4, 3)  # count = keep with best_of
    plain = build_request("a fox --count 2", clip_model=RANKER)
    assert (plain.best_of, plain.best_of_clip, plain.batch_size) == (None, None, 2)


@pytest.mark.parametrize(
    ("text", "options", "clip", "said"),
    [
        ("a fox --best 4", {}, None, "the bot's owner has not set one (the clip_model setting)"),
        ("a fox", {"best_of": 2}, "", "has not set one"),
        ("a fox --best 4", {}, RANKER, None),
        ("a fox --best 6", {}, RANKER, "best of 6 is more than your limit of 4 images at once"),
        (
            "a fox --best 1",
            {},
            RANKER,
            "the number of candidates (best_of) must be between 2 and 100, not 1",
        ),
        ("a fox --keep 2", {}, RANKER, "keep only applies with best_of"),
        ("a fox --best 2 --keep 3", {}, RANKER, "keep 3 is more than the 2 candidates"),
        (
            "a fox --best two",
            {},
            RANKER,
            "the number of candidates (best_of) must be a whole number, not 'two'",
        ),
    ],
)
def test_bad_best_of_is_refused_in_words(text, options, clip, said):
    if said is None:
        assert build_request(text, options=options, clip_model=clip).best_of == 4
        return
    with pytest.raises(ParseError) as info:
        build_request(text, options=options, clip_model=clip)
    assert said in str(info.value)


def test_best_of_counts_against_the_members_image_limit_with_every_other_problem():
    with pytest.raises(ParseError) as info:
        build_request(
            "a fox --best 3 --steps 99", clip_model=RANKER, limits=Limits(max_steps=50, max_count=2)
        )
    problems = info.value.problems
    assert any("best of 3 is more than your limit of 2" in p for p in problems)
    assert any("steps 99 is more than your limit of 50" in p for p in problems)
    assert build_request("a fox --best 2", clip_model=RANKER, limits=Limits(max_count=2)).best_of


# -- the job -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranked_env(tmp_path_factory, cache_folder):
    from runner.environment import Environment
    from runner.settings import EngineSettings

    env = Environment(
        EngineSettings(data_dir=tmp_path_factory.mktemp("best-of-env"), cache_folder=cache_folder)
    )
    folder = write_tiny_clip(env.settings.models_root)
    yield env, load_ranker(folder)
    env.close()


class Posts:
    def __init__(self):
        self.results = []
        self._lock = threading.Lock()

    def __call__(self, result):
        with self._lock:
            self.results.append(result)
            return 5000 + result.job_id


@pytest.fixture
def service(tmp_path, cache_folder, ranked_env):
    from bot.services.jobs import JobService
    from bot.settings import Settings

    env, _ = ranked_env
    database = Database(f"sqlite:///{tmp_path / 'easel.sqlite3'}")
    database.upgrade()
    settings = Settings(
        data_dir=env.settings.data_dir, cache_folder=cache_folder, clip_model=RANKER
    )
    posts = Posts()
    jobs = JobService.create(database, settings, env, poster=posts)
    jobs.start()
    yield jobs, database, posts
    jobs.stop(timeout=10)
    database.close()


def candidates_of(env, request: GenerationRequest, seed: int) -> np.ndarray:
    """The request's N candidates, made independently: the same template and seed with a
    batch of N and no ranking."""
    plain = request.model_copy(
        update={"best_of": None, "batch_size": request.best_of, "seed": seed}
    )
    return as_uint8(env.run(env.build_workflow(plain)).values["8"][0])


def pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def stored(database, generation_id: int) -> Generation:
    with database.session() as session:
        generation = session.get(Generation, generation_id)
        _ = list(generation.outputs)
        session.expunge(generation)
        return generation


@pytest.mark.parametrize("keep", [1, 2])
def test_one_job_makes_the_candidates_and_keeps_what_clip_ranks_first(service, ranked_env, keep):
    jobs, database, posts = service
    env, ranker = ranked_env
    request = build_request(
        f"a lighthouse at dawn --best 4 --keep {keep} --steps 2 --size 64x64 --seed 11",
        clip_model=RANKER,
    )
    ticket = jobs.submit(USER, request)
    assert jobs.wait_idle(120)
    generation = stored(database, ticket.generation_id)
    # The job made one batch of 4: the latent it sampled, and one rank node.
    workflow = generation.workflow
    assert workflow["5"]["inputs"]["batch_size"] == 4
    assert [n["class_type"] for n in workflow.values()].count("CLIPImageTextRank") == 1

    candidates = candidates_of(env, request, generation.seed)
    scores = independent_scores(ranker, candidates, request.prompt, env.settings.cache_dir)
    expected = sorted(range(4), key=lambda i: -scores[i])[:keep]
    ranking = generation.parameters[best_of.RESULT_KEY]
    assert ranking["kept"] == expected
    assert ranking["clip_model"] == RANKER and ranking["seed"] == generation.seed == 11
    assert np.allclose(ranking["scores"], scores, atol=0.3)
    # History keeps what is posted, best first; the post got exactly those.
    outputs = sorted(generation.outputs, key=lambda o: o.index)
    assert len(outputs) == keep
    for output, index in zip(outputs, expected, strict=True):
        assert np.array_equal(pixels(env.settings.data_dir / output.path), candidates[index])
    (result,) = [r for r in posts.results if r.job_id == ticket.job_id]
    assert len(result.images) == keep


def test_reroll_and_reuse_seed_remake_the_same_candidates(service, ranked_env):
    jobs, database, _ = service
    env, _ = ranked_env
    request = build_request(
        "a red boat --best 3 --steps 2 --size 64x64 --seed 4", clip_model=RANKER
    )
    first = stored(database, jobs.submit(USER, request).generation_id)
    assert jobs.wait_idle(120)
    first = stored(database, first.id)
    again = request_from_generation(first)  # what reroll and reuse seed start from
    assert (again.best_of, again.best_of_clip, again.batch_size, again.seed) == (3, RANKER, 1, 4)
    second = stored(database, jobs.submit(USER, again).generation_id)
    assert jobs.wait_idle(120)
    second = stored(database, second.id)
    assert second.parameters[best_of.RESULT_KEY] == first.parameters[best_of.RESULT_KEY]
    data = env.settings.data_dir
    assert np.array_equal(  # the same pixels (the files' workflow chunks name the generation)
        pixels(data / second.outputs[0].path), pixels(data / first.outputs[0].path)
    )
    # A reroll (a new seed) is still best of 3.
    rerolled = request_from_generation(first, seed=None)
    assert rerolled.best_of == 3 and rerolled.seed is None


def test_a_plain_generation_records_no_ranking(service):
    jobs, database, _ = service
    request = build_request("a plain fox --steps 2 --size 64x64 --count 2", clip_model=RANKER)
    ticket = jobs.submit(USER, request)
    assert jobs.wait_idle(120)
    generation = stored(database, ticket.generation_id)
    assert best_of.RESULT_KEY not in generation.parameters
    assert len(generation.outputs) == 2
    assert best_of.details_text(generation.parameters) is None
    assert best_of.post_note(generation.parameters) is None


# -- what is shown -------------------------------------------------------------------------


class _Generation:
    def __init__(self, seed, parameters):
        self.seed = seed
        self.parameters = parameters


def test_details_list_every_candidate_best_first_and_mark_the_posted():
    generation = _Generation(9, {"steps": 2})
    outputs = {
        "9": {"images": [{"path": "x.png"}]},
        "10": {
            "clip_ranking": {
                "scores": [20.5, 31.25, 12.0, 25.0],
                "ranking": [1, 3],
                "clip_name": "c",
            }
        },
    }
    assert best_of.record_ranking(generation, outputs)
    assert generation.parameters["steps"] == 2  # the request's parameters stay
    found = best_of.candidates(generation.parameters)
    assert [(c.index, c.score, c.place) for c in found] == [
        (0, 20.5, None),
        (1, 31.25, 1),
        (2, 12.0, None),
        (3, 25.0, 2),
    ]
    assert best_of.details_text(generation.parameters).splitlines() == [
        "4 candidates from seed 9, CLIP c",
        "★ image 2: 31.25",
        "★ image 4: 25.00",
        "image 1: 20.50",
        "image 3: 12.00",
    ]
    note = best_of.post_note(generation.parameters)
    assert note.startswith("Best 2 of 4 by CLIP score (31.25, 25.00)")
    assert not best_of.record_ranking(_Generation(1, {}), {"9": {"images": []}})
