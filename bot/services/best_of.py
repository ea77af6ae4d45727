"""Best of N: ``/imagine ... best_of:4`` (``--best 4`` inline) makes N candidates in one
batch, ranks them with the configured CLIP image-text model and posts the best one (or
the best ``keep``).

The request carries ``best_of`` (N) and ``best_of_clip`` (the model); the runner's
:func:`runner.templates.rank_with_clip` builds the template's workflow with a batch of N
and a ``CLIPImageTextRank`` node before its SaveImage, so only the images kept are saved
and the N candidates cost one batched sampling run, not N jobs. The rank node reports
every candidate's CLIPScore among the job's outputs; :func:`record_ranking` keeps that
report with the generation (``parameters["best_of_result"]``), which Details shows.

Candidates share the generation's seed: candidate ``i`` is image ``i`` of the batch that
seed makes (as in ComfyUI, one seed draws the noise of the whole batch), so reroll, reuse
seed and a rerun make the same candidates and the same choice again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.services.parsing import Limits, ParseError, parse_int

RESULT_KEY = "best_of_result"
"""Where a generation's parameters keep the ranking (scores of every candidate)."""

MIN_CANDIDATES = 2
MAX_CANDIDATES = 100

CANDIDATES = "the number of candidates (best_of)"

NO_CLIP_MODEL = (
    "best of N needs a CLIP model to rank the candidates, and the bot's owner has not set "
    "one (the clip_model setting); leave best_of out."
)


def offered(settings: Any) -> bool:
    """Whether best_of is offered at all: a CLIP model is configured."""
    return bool(getattr(settings, "clip_model", None))


def best_of_choice(
    slash: Mapping[str, Any],
    inline: Mapping[str, Any],
    clip_model: str | None,
    limits: Limits,
) -> tuple[int | None, int | None]:
    """``(best_of, keep)`` from the slash command's and the inline options (slash wins);
    ``(None, None)`` when best_of was not asked for. ``keep`` falls back to an explicit
    ``count``, else 1. Raises :class:`ParseError`: no CLIP model configured, more
    candidates than the member's image limit, keep without best_of or above it."""

    def given(key: str) -> Any:
        return slash[key] if key in slash else inline.get(key)

    raw_best, raw_keep = given("best_of"), given("keep")
    if raw_best is None:
        if raw_keep is not None:
            raise ParseError(
                "keep only applies with best_of (e.g. --best 4 --keep 2); use count for a "
                "plain batch."
            )
        return None, None
    best_of = parse_int(CANDIDATES, raw_best, MIN_CANDIDATES, MAX_CANDIDATES)
    if not clip_model:
        raise ParseError(NO_CLIP_MODEL)
    if best_of > limits.max_count:
        raise ParseError(
            f"best of {best_of} is more than your limit of {limits.max_count} images at once "
            "(the candidates are made as one batch)."
        )
    raw = raw_keep if raw_keep is not None else given("count")
    keep = 1 if raw is None else parse_int("keep", raw, 1, MAX_CANDIDATES)
    if keep > best_of:
        raise ParseError(f"keep {keep} is more than the {best_of} candidates of best of {best_of}.")
    return best_of, keep


# -- the result ----------------------------------------------------------------------------


def ranking_report(outputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The rank node's report among a job's outputs (``{"scores": [...], "ranking":
    [...], "clip_name": ...}``), or None when the job ranked nothing."""
    for report in (outputs or {}).values():
        if isinstance(report, Mapping) and isinstance(report.get("clip_ranking"), Mapping):
            return dict(report["clip_ranking"])
    return None


def record_ranking(generation: Any, outputs: Mapping[str, Any] | None) -> bool:
    """Keep the ranking a best-of job reported with its generation (in its parameters,
    beside the request): each candidate's score and batch index, and which were kept,
    best first. Returns whether there was a ranking to keep."""
    report = ranking_report(outputs)
    if report is None:
        return False
    scores = [float(s) for s in report.get("scores") or []]
    generation.parameters = {  # a new dict, so that the JSON column is written
        **(generation.parameters or {}),
        RESULT_KEY: {
            "clip_model": report.get("clip_name"),
            "scores": scores,
            "kept": [int(i) for i in report.get("ranking") or []],
            "seed": generation.seed,
        },
    }
    return True


@dataclass(frozen=True)
class Candidate:
    """One candidate of a best-of generation."""

    index: int
    """Its place in the batch (0-based): the seed's image ``index``."""
    score: float
    """CLIPScore against the prompt (100 x cosine, clamped at 0)."""
    place: int | None
    """1 for the best; its place among those posted, None when it was not posted."""


def candidates(parameters: Mapping[str, Any] | None) -> list[Candidate]:
    """The candidates of a generation's ranking, in batch order ([] for none)."""
    result = (parameters or {}).get(RESULT_KEY)
    if not isinstance(result, Mapping):
        return []
    kept = [int(i) for i in result.get("kept") or []]
    return [
        Candidate(i, float(score), kept.index(i) + 1 if i in kept else None)
        for i, score in enumerate(result.get("scores") or [])
    ]


def details_text(parameters: Mapping[str, Any] | None) -> str | None:
    """Details' line on the ranking: the CLIP model, then every candidate's score best
    first, the posted ones marked; None for a generation that was not best of N."""
    found = candidates(parameters)
    if not found:
        return None
    result = parameters[RESULT_KEY]  # type: ignore[index]
    ordered = sorted(found, key=lambda c: (-c.score, c.index))
    parts = [
        f"{'★ ' if c.place is not None else ''}image {c.index + 1}: {c.score:.2f}" for c in ordered
    ]
    head = (
        f"{len(found)} candidates from seed {result.get('seed')}, CLIP {result.get('clip_model')}"
    )
    return f"{head}\n" + "\n".join(parts)


def post_note(parameters: Mapping[str, Any] | None) -> str | None:
    """The result message's one-line note: ``Best 1 of 4 by CLIP score (31.20); every
    candidate's score is under Details.``; None when not best of N."""
    found = candidates(parameters)
    if not found:
        return None
    posted = sorted((c for c in found if c.place is not None), key=lambda c: c.place)
    scores = ", ".join(f"{c.score:.2f}" for c in posted)
    return (
        f"Best {len(posted)} of {len(found)} by CLIP score ({scores}); every candidate's "
        "score is under Details."
    )


__all__ = [
    "NO_CLIP_MODEL",
    "RESULT_KEY",
    "Candidate",
    "best_of_choice",
    "candidates",
    "details_text",
    "offered",
    "post_note",
    "ranking_report",
    "record_ranking",
]
