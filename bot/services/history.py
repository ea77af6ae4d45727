"""Every generation recorded: submitting (seed policy, LoRAs, the workflow), the result
(outputs stored by content hash, status and timings), and finding generations again.

The life of a generation (every method blocks; the event loop calls them with
``await asyncio.to_thread(history.method, ...)``)::

    history = History.for_environment(db, env)
    prepared = history.prepare(user_id, request, channel_id=..., guild_id=...)
    history.mark_running(prepared.generation_id)
    try:
        result = env.run(prepared.workflow)
    except Exception as exc:
        history.record_result(prepared.generation_id, exc)
    else:
        generation = history.record_result(prepared.generation_id, result)
    # post history.output_paths(generation), then:
    history.set_message(generation.id, message_id=..., channel_id=...)

Output images are moved from the runner's output folder to ``DATA_DIR/images/<sha256>.png``
(so that forgetting a user leaves no copy behind); after :meth:`History.record_result` the
paths in ``RunResult.images`` are gone: use :meth:`History.output_paths`. Each
generation's ``SaveImage`` nodes get the prefix ``easel-g<id>``, so that a node cache hit
in the runner never hands back the file of an earlier generation.

(One concern, a generation's record from submission to deletion, so one module of
about 500 lines; the job side lives in :mod:`bot.services.jobs`.)
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bot.services.errors import ServiceError
from bot.services.loras import (
    ResolvedLora,
    apply_loras,
    model_family,
    resolve_loras_in_session,
)
from bot.services.storage import (
    IMAGES_FOLDER,
    delete_unreferenced,
    place_file,
    relative_to_data,
    sha256_file,
    stored_path,
)
from db import generations as db_generations
from db.base import utcnow
from db.engine import Database
from db.errors import InvalidTransition
from db.models import Generation, JobStatus
from db.results import Page, StoredFile
from db.seeds import seed_for_job
from runner.errors import JobCancelled
from runner.settings import EngineSettings
from runner.templates import GenerationRequest

OUTPUT_PREFIX = "easel"
"""``SaveImage`` prefix of recorded generations: ``easel-g<generation id>``."""

SAVE_NODES = ("SaveImage",)
"""Node types whose ``filename_prefix`` is set per generation."""


class NoSeedRecorded(ServiceError):
    """A generation whose seed was asked for has none recorded."""

    def __init__(self, generation_id: int):
        self.generation_id = generation_id
        super().__init__(f"generation {generation_id} has no seed recorded")


class NoWorkflowBuilder(ServiceError):
    """:meth:`History.prepare` needs a workflow builder (an environment's)."""

    def __init__(self) -> None:
        super().__init__(
            "this History has no workflow builder; build it with History.for_environment"
        )


@dataclass(frozen=True)
class PreparedGeneration:
    """A recorded (queued) generation, ready to run."""

    generation_id: int
    seed: int | None
    workflow: dict[str, Any]
    """The workflow to run (as recorded)."""
    request: GenerationRequest | None
    """The request as it will run: seed set, LoRA file names, trigger words added. None
    for a rerun, which runs the recorded workflow."""
    loras: tuple[ResolvedLora, ...] = ()


@dataclass(frozen=True)
class StagedImage:
    """An output image ready to be recorded: where it is now, its hash and size."""

    path: Path
    sha256: str
    width: int
    height: int
    size_bytes: int


def with_output_prefix(workflow: dict[str, Any], generation_id: int) -> dict[str, Any]:
    """A copy of ``workflow`` whose save nodes write files named after the generation."""
    workflow = copy.deepcopy(workflow)
    for node in workflow.values():
        if isinstance(node, dict) and node.get("class_type") in SAVE_NODES:
            inputs = node.setdefault("inputs", {})
            if not isinstance(inputs.get("filename_prefix"), list):  # leave links alone
                inputs["filename_prefix"] = f"{OUTPUT_PREFIX}-g{generation_id}"
    return workflow


def _parameters(
    request: GenerationRequest,
    final: GenerationRequest,
    resolved: Sequence[ResolvedLora],
    reuse_seed_of: int | None,
) -> dict[str, Any]:
    params = request.model_dump(mode="json", exclude={"loras", "filename_prefix", "seed"})
    params["template"] = request.template_name
    params["seed_requested"] = request.seed
    params["loras"] = [r.describe() for r in resolved]
    if final.prompt != request.prompt:
        params["prompt_sent"] = final.prompt
    if reuse_seed_of is not None:
        params["reuse_seed_of"] = reuse_seed_of
    return params


def stage_image(path: str | Path) -> StagedImage:
    """Hash and measure an output image (reads the file once and the PNG header)."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as image:  # reads the header only
        width, height = image.size
    return StagedImage(path, sha256_file(path), width, height, path.stat().st_size)


class History:
    """Recording and finding generations on one database and data folder.

    ``build_workflow(request) -> workflow`` and ``family_of(model) -> family`` come from
    the runner's environment (see :meth:`for_environment`); only :meth:`prepare` needs
    them.
    """

    def __init__(
        self,
        db: Database,
        settings: EngineSettings,
        *,
        build_workflow: Callable[[GenerationRequest], dict[str, Any]] | None = None,
        family_of: Callable[[str | None], str] | None = None,
    ):
        self.db = db
        self.settings = settings
        self.build_workflow = build_workflow
        self.family_of = family_of or (lambda model: model_family(settings, model))

    @classmethod
    def for_environment(cls, db: Database, env: Any) -> History:
        """A History that builds workflows with ``env`` (a :class:`runner.environment.Environment`)
        and asks its model manager for checkpoint families."""
        return cls(
            db,
            env.settings,
            build_workflow=env.build_workflow,
            family_of=lambda model: model_family(env.settings, model, env.models),
        )

    @property
    def images_dir(self) -> Path:
        """Where output images are kept, ``<sha256>.png``."""
        return self.settings.data_dir / IMAGES_FOLDER

    # -- submitting ------------------------------------------------------------------

    def prepare_in_session(
        self,
        session: Session,
        user_id: int,
        request: GenerationRequest,
        *,
        family: str | None,
        reuse_seed_of: int | None,
        parent_id: int | None,
        guild_id: int | None,
        channel_id: int | None,
        message_id: int | None,
        add_trigger_words: bool,
    ) -> PreparedGeneration:
        """:meth:`prepare` inside the caller's write unit of work (the job service
        creates the job row in the same one); ``family`` is the chosen model's, needed
        when the request has LoRAs."""
        if self.build_workflow is None:
            raise NoWorkflowBuilder()
        requested = request.seed
        if reuse_seed_of is not None:
            source = db_generations.get_generation(session, reuse_seed_of, user_id=user_id)
            if source.seed is None:
                raise NoSeedRecorded(reuse_seed_of)
            requested = source.seed
        seed = seed_for_job(session, user_id, requested)
        resolved = (
            resolve_loras_in_session(session, user_id, request.loras, family=family)
            if request.loras
            else []
        )
        final = apply_loras(request, resolved, add_trigger_words=add_trigger_words)
        final = final.model_copy(update={"seed": seed})
        generation = db_generations.record_generation(
            session,
            user_id,
            prompt=request.prompt,
            negative_prompt=request.negative or None,
            workflow={},
            parameters=_parameters(request, final, resolved, reuse_seed_of),
            seed=seed,
            model=request.model or self.settings.default_model,
            template=request.template_name,
            parent_id=parent_id,
            guild_id=guild_id,
            channel_id=channel_id,
            message_id=message_id,
        )
        final = final.model_copy(update={"filename_prefix": f"{OUTPUT_PREFIX}-g{generation.id}"})
        workflow = self.build_workflow(final)
        generation.workflow = workflow
        session.flush()
        return PreparedGeneration(generation.id, seed, workflow, final, tuple(resolved))

    def prepare(
        self,
        user_id: int,
        request: GenerationRequest,
        *,
        reuse_seed_of: int | None = None,
        parent_id: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        add_trigger_words: bool = True,
    ) -> PreparedGeneration:
        """Record a new generation of ``user_id`` as queued and build its workflow.

        The seed: ``request.seed`` if set, else the seed of the user's own generation
        ``reuse_seed_of``, else the user's seed policy (random, fixed, increment); it is
        stored as their last seed. The request's LoRA names resolve to the user's own,
        then shared LoRAs, refused for another family than the model's; their trigger
        words are appended to the prompt (unless ``add_trigger_words`` is False).
        ``parent_id`` links img2img and variations to their source. Raises
        :class:`db.errors.NotFound`, :class:`db.errors.FamilyMismatch`,
        :class:`runner.errors.TemplateError`...; nothing is recorded then.
        """
        family = self.family_of(request.model) if request.loras else None
        return self.db.run_sync(
            self.prepare_in_session,
            user_id,
            request,
            family=family,
            reuse_seed_of=reuse_seed_of,
            parent_id=parent_id,
            guild_id=guild_id,
            channel_id=channel_id,
            message_id=message_id,
            add_trigger_words=add_trigger_words,
        )

    def _rerun_tx(
        self,
        session: Session,
        user_id: int,
        generation_id: int,
        *,
        guild_id: int | None,
        channel_id: int | None,
    ) -> PreparedGeneration:
        source = db_generations.get_generation(session, generation_id, user_id=user_id)
        generation = db_generations.record_generation(
            session,
            user_id,
            prompt=source.prompt,
            negative_prompt=source.negative_prompt,
            workflow={},
            parameters={**source.parameters, "rerun_of": source.id},
            seed=source.seed,
            model=source.model,
            template=source.template,
            parent_id=source.id,
            guild_id=guild_id,
            channel_id=channel_id,
        )
        workflow = with_output_prefix(source.workflow, generation.id)
        generation.workflow = workflow
        session.flush()
        return PreparedGeneration(generation.id, source.seed, workflow, None)

    def rerun(
        self,
        user_id: int,
        generation_id: int,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
    ) -> PreparedGeneration:
        """Record a new generation that runs the user's own generation ``generation_id``
        again: the same workflow and seed (only the output file prefix differs), so the
        same image on the same machine. Its parent is the original."""
        return self.db.run_sync(
            self._rerun_tx, user_id, generation_id, guild_id=guild_id, channel_id=channel_id
        )

    # -- results -------------------------------------------------------------------

    def mark_running(self, generation_id: int) -> Generation:
        """Stamp the start of a generation's run."""
        return self.db.run_sync(
            db_generations.set_generation_status, generation_id, JobStatus.RUNNING
        )

    def record_in_session(
        self,
        session: Session,
        generation_id: int,
        images: Sequence[StagedImage],
        seconds: float | None,
        error: BaseException | None,
    ) -> Generation:
        """:meth:`record_result` inside the caller's write unit of work: ``images`` from
        :func:`stage_image` (moved into place here), ``seconds`` the run's duration, or
        ``error`` for a failed or cancelled run."""
        # The first statement takes the write lock before any file moves.
        generation = db_generations.get_generation(session, generation_id, user_id=0, admin=True)
        if generation.status.finished:
            final = JobStatus.DONE if error is None else JobStatus.FAILED
            raise InvalidTransition("generation", generation_id, generation.status, final)
        now = utcnow()
        if generation.started_at is None:
            started = now - timedelta(seconds=seconds or 0.0)
            db_generations.set_generation_status(
                session, generation_id, JobStatus.RUNNING, at=started
            )
        if error is not None:
            status = JobStatus.CANCELLED if isinstance(error, JobCancelled) else JobStatus.FAILED
            message = str(error).strip() or type(error).__name__
            db_generations.set_generation_status(
                session, generation_id, status, error=message, at=now
            )
        else:
            start = len(generation.outputs)
            for offset, image in enumerate(images):
                suffix = image.path.suffix.lower() or ".png"
                target = self.images_dir / f"{image.sha256}{suffix}"
                place_file(image.path, target, move=True)
                db_generations.add_output(
                    session,
                    generation_id,
                    index=start + offset,
                    path=relative_to_data(self.settings.data_dir, target),
                    sha256=image.sha256,
                    width=image.width,
                    height=image.height,
                    size_bytes=image.size_bytes,
                )
            db_generations.set_generation_status(session, generation_id, JobStatus.DONE, at=now)
        return db_generations.get_generation(session, generation_id, user_id=0, admin=True)

    def _cleanup_images(self, images: Sequence[StagedImage]) -> None:
        files = [
            StoredFile(
                "image",
                i.sha256,
                relative_to_data(
                    self.settings.data_dir,
                    self.images_dir / f"{i.sha256}{i.path.suffix.lower() or '.png'}",
                ),
            )
            for i in images
        ]
        self.db.run_sync(delete_unreferenced, self.settings.data_dir, files)

    def record_result(self, generation_id: int, outcome: Any) -> Generation:
        """Record how a generation ended: a :class:`runner.executor.RunResult` (its images
        are moved into the data folder by content hash and recorded with their sha256 and
        size; status done) or the exception it raised (status failed, or cancelled for
        :class:`runner.errors.JobCancelled`, with the message). Timings: ``started_at``
        (from :meth:`mark_running`, else derived from the run's seconds) and
        ``finished_at``. Returns the generation with its outputs."""
        if isinstance(outcome, BaseException):
            return self.db.run_sync(self.record_in_session, generation_id, (), None, outcome)
        images = [stage_image(p) for p in outcome.images]
        try:
            return self.db.run_sync(
                self.record_in_session, generation_id, images, outcome.seconds, None
            )
        except BaseException:
            self._cleanup_images(images)
            raise

    def set_message(
        self,
        generation_id: int,
        *,
        message_id: int,
        channel_id: int | None = None,
        guild_id: int | None = None,
    ) -> Generation:
        """Remember the Discord message (and channel, guild) that shows a generation."""
        return self.db.run_sync(
            db_generations.set_generation_message,
            generation_id,
            message_id=message_id,
            channel_id=channel_id,
            guild_id=guild_id,
        )

    # -- queries -------------------------------------------------------------------

    def history(
        self,
        user_id: int,
        *,
        query: str | None = None,
        page: int = 1,
        per_page: int = 10,
        status: JobStatus | str | None = None,
    ) -> Page[Generation]:
        """Page ``page`` (from 1) of the user's generations, newest first; ``query``
        keeps those whose prompt contains it (ignoring case)."""
        return self.db.read_sync(
            db_generations.history, user_id, **_page_args(query, page, per_page, status)
        )

    def get(self, user_id: int, generation_id: int) -> Generation:
        """One of the user's generations with its outputs; :class:`db.errors.NotFound`
        for another user's."""
        return self.db.read_sync(db_generations.get_generation, generation_id, user_id=user_id)

    def find_by_message(self, message_id: int) -> Generation | None:
        """The generation a Discord message shows, whoever made it (the message is public
        in its channel; reply-to-image and the result buttons start from it)."""
        return self.db.read_sync(db_generations.find_generation_by_message, message_id)

    def find_by_image(self, image: bytes | str) -> Generation | None:
        """The generation that produced an image, given its bytes (e.g. a Discord
        attachment) or its sha256."""
        return self.db.read_sync(db_generations.find_generation_by_output_hash, _image_hash(image))

    def delete(self, user_id: int, generation_id: int) -> list[str]:
        """Delete one of the user's generations and the image files nothing else uses;
        returns the relative paths deleted."""
        files = self.db.run_sync(db_generations.delete_generation, generation_id, user_id=user_id)
        return self.db.run_sync(delete_unreferenced, self.settings.data_dir, files) if files else []

    def output_paths(self, generation: Generation) -> list[Path]:
        """The image files of a generation (loaded with its outputs), in order."""
        return [stored_path(self.settings.data_dir, o.path) for o in generation.outputs]


def _image_hash(image: bytes | str) -> str:
    if isinstance(image, bytes | bytearray | memoryview):
        return hashlib.sha256(image).hexdigest()
    return str(image).strip().lower()


def _page_args(query: str | None, page: int, per_page: int, status: Any) -> dict[str, Any]:
    from db.errors import InvalidValue

    if page < 1:
        raise InvalidValue("page", page, "pages are numbered from 1")
    return {
        "offset": (page - 1) * per_page,
        "limit": per_page,
        "prompt_contains": query or None,
        "status": status,
    }


__all__ = [
    "OUTPUT_PREFIX",
    "History",
    "NoSeedRecorded",
    "NoWorkflowBuilder",
    "PreparedGeneration",
    "StagedImage",
    "stage_image",
    "with_output_prefix",
]
