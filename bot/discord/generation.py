"""The bot's generation service: from a parsed request to a queued job, and from a
finished job to stored, recorded, checked images.

It joins the user's stored data (seed policy, LoRA library) with the runner, records the
generation and the job in the database, and hands the work to a :class:`JobQueue`
(``bot.discord.local_queue`` until the durable job service is wired in). Nothing here
imports discord.py: cogs call it and render what it returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.discord.files import StoredImage, input_from_output
from bot.discord.local_queue import JobQueue, QueuedJob, QueueFull
from bot.discord.moderation import Refused
from bot.discord.parsing import ImagineRequest, LoraSpec
from bot.services.history import History
from bot.services.storage import delete_unreferenced
from db import generations as db_generations
from db import jobs as db_jobs
from db.errors import DbError
from db.models import JobStatus
from runner import events as ev
from runner.context import CancelToken
from runner.errors import JobCancelled
from runner.templates import GenerationRequest, LoraRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """Who asked and where the result goes."""

    user_id: int
    channel_id: int | None = None
    guild_id: int | None = None
    display_name: str | None = None
    nsfw_allowed: bool = False


@dataclass(frozen=True)
class Submission:
    """A request ready to queue. ``init_image`` is an input-folder name (img2img)."""

    request: ImagineRequest
    init_image: str | None = None
    parent_id: int | None = None
    kind: str = "imagine"


@dataclass
class Ticket:
    """A queued job: its ids, its place in the queue, and a future for its :class:`Outcome`."""

    job_id: int
    generation_id: int
    position: int
    seed: int
    submission: Submission
    destination: Destination
    future: Any = None


@dataclass
class Outcome:
    """A finished generation: stored images, and for each a safety reason or None."""

    generation_id: int
    job_id: int
    seed: int
    submission: Submission
    images: list[StoredImage]
    flagged: list[str | None] = field(default_factory=list)
    seconds: float = 0.0


def base_size(env, model: str) -> tuple[int, int]:
    """A model's native size: 1024 for SDXL-family models, else 512."""
    for checkpoint in env.models.loaded():
        if checkpoint.name == model:
            return (1024, 1024) if checkpoint.family == "sdxl" else (512, 512)
    return (1024, 1024) if "xl" in model.lower() else (512, 512)


# -- database units of work (run on a worker thread by db.run) -------------------------


def _create_job(session, dest: Destination, generation_id: int, parameters: dict[str, Any]) -> int:
    job = db_jobs.create_job(
        session,
        dest.user_id,
        request={**parameters, "channel_id": dest.channel_id, "guild_id": dest.guild_id},
        generation_id=generation_id,
    )
    return job.id


def _set_job(session, job_id: int, status: JobStatus, error: str | None = None) -> None:
    db_jobs.set_job_status(session, job_id, status, error=error, worker="local")


def _recover(session) -> int:
    count = 0
    message = "the bot restarted before this job finished; please run it again"
    for job in db_jobs.list_jobs(session, statuses=db_jobs.ACTIVE_STATUSES):
        db_jobs.set_job_status(session, job.id, JobStatus.FAILED, error=message)
        if job.generation_id is not None:
            try:
                db_generations.set_generation_status(
                    session, job.generation_id, JobStatus.FAILED, error=message
                )
            except DbError:  # already finished
                log.debug("generation %s already finished", job.generation_id)
        count += 1
    return count


def _delete_any(session, generation_id: int, data_dir) -> int | None:
    generation = db_generations.get_generation(session, generation_id, user_id=0, admin=True)
    message_id = generation.message_id
    files = db_generations.delete_generation(session, generation_id, user_id=0, admin=True)
    delete_unreferenced(session, data_dir, files)
    return message_id


def generation_request(submission: Submission) -> GenerationRequest:
    """The runner's request for a submission (LoRAs by the user's names; the history
    service resolves them to library files)."""
    request = submission.request
    loras = [
        LoraRef(name=spec.name, strength_clip=spec.clip_weight)
        if spec.weight is None
        else LoraRef(name=spec.name, strength_model=spec.weight, strength_clip=spec.clip_weight)
        for spec in request.loras
    ]
    return GenerationRequest(
        prompt=request.prompt,
        negative=request.negative,
        seed=request.seed,
        steps=request.steps,
        cfg=request.cfg,
        sampler=request.sampler,
        scheduler=request.scheduler,
        width=request.width,
        height=request.height,
        batch_size=request.count,
        loras=loras,
        init_image=submission.init_image,
        strength=request.strength if submission.init_image else 0.75,
        model=request.model,
    )


# -- the service ----------------------------------------------------------------------


class GenerationService:
    """Submits generations and records their results. One per bot."""

    def __init__(self, env, database, settings, queue: JobQueue):
        self.env = env
        self.db = database
        self.settings = settings
        self.queue = queue
        self.history = History.for_environment(database, env)
        self._tasks: set[asyncio.Future] = set()
        self._reserved: dict[int, int] = {}

    async def recover_interrupted(self) -> int:
        """Mark jobs a previous process left queued or running as failed (the local queue
        keeps no state across restarts). Returns how many."""
        return await self.db.run(_recover)

    def check_prompt(self, prompt: str, negative: str, dest: Destination) -> None:
        """Plugins' prompt moderation (``easel_check_prompt``); raises :class:`Refused`."""
        reason = self.env.pm.hook.easel_check_prompt(
            prompt=prompt, negative=negative, user_id=dest.user_id, nsfw_allowed=dest.nsfw_allowed
        )
        if reason:
            raise Refused(str(reason))

    async def submit(
        self,
        submission: Submission,
        dest: Destination,
        listener: Callable[[ev.Event], Awaitable[None]] | None = None,
    ) -> Ticket:
        """Record and queue a generation. Raises :class:`Refused` (queue cap, moderation)
        or the data layer's errors (an unknown LoRA, a LoRA of another family...)."""
        cap = self.settings.max_queued_per_user
        pending = getattr(self.queue, "pending_for", lambda user_id: 0)
        # Count submissions still being recorded too, so concurrent requests cannot pass the cap together.
        if pending(dest.user_id) + self._reserved.get(dest.user_id, 0) >= cap:
            raise Refused(f"You already have {cap} requests waiting; try again when one is done.")
        self._reserved[dest.user_id] = self._reserved.get(dest.user_id, 0) + 1
        try:
            return await self._submit(submission, dest, listener, cap)
        finally:
            self._reserved[dest.user_id] -= 1
            if not self._reserved[dest.user_id]:
                del self._reserved[dest.user_id]

    async def _submit(
        self, submission: Submission, dest: Destination, listener, cap: int
    ) -> Ticket:
        self.check_prompt(submission.request.prompt, submission.request.negative, dest)
        prepared = await self.history.aprepare(
            dest.user_id,
            generation_request(submission),
            parent_id=submission.parent_id,
            guild_id=dest.guild_id,
            channel_id=dest.channel_id,
        )
        job_id = await self.db.run(
            _create_job, dest, prepared.generation_id, {"kind": submission.kind}
        )

        def run(cancel: CancelToken, emit: ev.EventHandler) -> Outcome:
            return self._execute(prepared, job_id, submission, dest, cancel, emit)

        job = QueuedJob(
            job_id=job_id,
            user_id=dest.user_id,
            run=run,
            label=submission.request.prompt[:80],
            listener=listener,
        )
        try:
            position = self.queue.submit(job)
        except QueueFull:
            await self.history.arecord_result(
                prepared.generation_id, JobCancelled("the queue was full")
            )
            await self.db.run(_set_job, job_id, JobStatus.CANCELLED, "the queue was full")
            raise Refused(
                f"You already have {cap} requests waiting; try again when one is done."
            ) from None
        job.future.add_done_callback(
            lambda _f: self._if_cancelled_while_queued(job, prepared.generation_id)
        )
        return Ticket(
            job_id, prepared.generation_id, position, prepared.seed, submission, dest, job.future
        )

    def _if_cancelled_while_queued(self, job: QueuedJob, generation_id: int) -> None:
        # A job cancelled before it ran never reaches _execute: record it here.
        if job.status != "cancelled":
            return

        async def record() -> None:
            try:
                await self.history.arecord_result(
                    generation_id, JobCancelled("cancelled while queued")
                )
                await self.db.run(_set_job, job.job_id, JobStatus.CANCELLED)
            except Exception:
                log.exception("could not record the cancellation of job %s", job.job_id)

        task = asyncio.ensure_future(record())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _execute(
        self,
        prepared,
        job_id: int,
        submission: Submission,
        dest: Destination,
        cancel: CancelToken,
        emit,
    ) -> Outcome:
        """Run one job on a worker thread: statuses, the workflow, storing, safety."""
        generation_id = prepared.generation_id
        self.history.mark_running(generation_id)
        self.db.run_sync(_set_job, job_id, JobStatus.RUNNING)
        started = time.perf_counter()
        try:
            result = self.env.run(
                prepared.workflow,
                job_id=str(job_id),
                on_event=emit,
                cancel=cancel,
                previews=self.settings.previews,
            )
        except Exception as exc:
            self.history.record_result(generation_id, exc)
            status = JobStatus.CANCELLED if isinstance(exc, JobCancelled) else JobStatus.FAILED
            self.db.run_sync(_set_job, job_id, status, str(exc)[:2000])
            raise
        generation = self.history.record_result(generation_id, result)
        self.db.run_sync(_set_job, job_id, JobStatus.DONE)
        images = [
            StoredImage(o.path, o.sha256, o.width, o.height, o.size_bytes)
            for o in generation.outputs
        ]
        flagged = [self._check_output(image, submission, dest) for image in images]
        return Outcome(
            generation_id,
            job_id,
            prepared.seed,
            submission,
            images,
            flagged,
            time.perf_counter() - started,
        )

    def _check_output(
        self, image: StoredImage, submission: Submission, dest: Destination
    ) -> str | None:
        if dest.nsfw_allowed or self.settings.safety == "off":
            return None
        from PIL import Image

        try:
            with Image.open(self.settings.data_dir / image.path) as pil:
                pil.load()
                return self.env.pm.hook.easel_check_output(
                    image=pil, prompt=submission.request.prompt, user_id=dest.user_id, env=self.env
                )
        except Exception:
            log.exception("the safety check failed on %s; withholding it", image.path)
            return "the safety check failed"

    # -- after a job -----------------------------------------------------------------
    async def claim_posting(self, job_id: int, message_id: int) -> bool:
        """Record that a job's result was posted; False if it was posted already."""
        return await self.db.run(db_jobs.mark_job_posted, job_id, message_id)

    async def set_message(
        self, generation_id: int, message_id: int, channel_id: int | None, guild_id: int | None
    ) -> None:
        """Remember which Discord message shows a generation (buttons, replies)."""
        await self.db.run(
            db_generations.set_generation_message,
            generation_id,
            message_id=message_id,
            channel_id=channel_id,
            guild_id=guild_id,
        )

    # -- reading and changing past generations ----------------------------------------
    async def generation(
        self, generation_id: int, *, user_id: int | None = None, admin: bool = False
    ):
        """A generation with its outputs. With ``user_id``, only the user's own (or any
        for ``admin``); without, any (results are public in their channel)."""
        if user_id is None:
            return await self.db.read(
                db_generations.get_generation, generation_id, user_id=0, admin=True
            )
        return await self.db.read(
            db_generations.get_generation, generation_id, user_id=user_id, admin=admin
        )

    async def find_by_message(self, message_id: int):
        """The generation a Discord message shows, or None."""
        return await self.history.afind_by_message(message_id)

    async def find_by_image_hash(self, sha256: str):
        """The generation that produced an image with this content hash, or None."""
        return await self.history.afind_by_image(sha256)

    async def delete(self, generation_id: int, *, user_id: int, admin: bool = False) -> int | None:
        """Delete a generation (the owner's, or any for ``admin``) and the image files
        nothing else uses. Returns the Discord message id that showed it."""
        if admin:
            return await self.db.run(_delete_any, generation_id, self.settings.data_dir)
        generation = await self.history.aget(user_id, generation_id)
        await self.history.adelete(user_id, generation_id)
        return generation.message_id

    def init_image_from(self, generation, index: int) -> str:
        """An output of ``generation`` as an init image (for variations and upscales)."""
        outputs = sorted(generation.outputs, key=lambda o: o.index)
        if not 0 <= index < len(outputs):
            raise Refused(f"That result has no image {index + 1}.")
        return input_from_output(self.settings, outputs[index].path)


def _lora_specs(items: Any) -> tuple[LoraSpec, ...]:
    specs = []
    for item in items or []:
        if isinstance(item, dict):
            specs.append(
                LoraSpec(
                    str(item.get("name")), item.get("strength_model"), item.get("strength_clip")
                )
            )
        elif isinstance(item, list | tuple) and item:
            specs.append(
                LoraSpec(str(item[0]), None if len(item) < 2 or item[1] is None else float(item[1]))
            )
    return tuple(specs)


def request_from_generation(generation, **changes: Any) -> ImagineRequest:
    """The request a past generation was made from (for reroll, variations, upscale,
    reuse seed, and reply-to-image carry-over), with ``changes`` applied."""
    p = dict(generation.parameters or {})
    request = ImagineRequest(
        prompt=generation.prompt,
        negative=generation.negative_prompt or p.get("negative") or "",
        seed=generation.seed,
        steps=int(p.get("steps") or 20),
        cfg=float(p.get("cfg") if p.get("cfg") is not None else 7.0),
        sampler=str(p.get("sampler") or "euler"),
        scheduler=str(p.get("scheduler") or "normal"),
        width=int(p.get("width") or 512),
        height=int(p.get("height") or 512),
        count=int(p.get("batch_size") or p.get("count") or 1),
        model=generation.model or str(p.get("model") or ""),
        strength=float(p.get("strength") or 0.75),
        loras=_lora_specs(p.get("loras")),
    )
    return request.replace(**changes) if changes else request
