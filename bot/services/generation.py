"""The bot's generation service: from a parsed request to a stored, queued job of the
durable job service (:mod:`bot.services.jobs`), and the checks around it.

It joins the user's request with the job service (which records the generation and
the job before anyone is told about it, runs it fairly, and survives a restart), the
plugins' moderation hooks, and the generation records the result buttons work from.
Nothing here imports discord.py: cogs call it and render what it returns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

from bot.services.history import History
from bot.services.jobs import JobAlreadyFinished, JobInfo, JobNotFound
from bot.services.moderation import Refused
from bot.services.parsing import ImagineRequest, LoraSpec
from bot.services.storage import delete_unreferenced
from bot.services.uploads import input_from_output
from db import generations as db_generations
from db import jobs as db_jobs
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
    role_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Submission:
    """A request ready to queue. ``init_image`` is an input-folder name (img2img)."""

    request: ImagineRequest
    init_image: str | None = None
    parent_id: int | None = None
    kind: str = "imagine"


@dataclass
class Ticket:
    """A stored, queued job: its ids, its place in the queue and the estimated wait."""

    job_id: int
    generation_id: int
    position: int
    seed: int | None
    submission: Submission
    destination: Destination
    estimated_wait_s: float | None = None


class _Prompt(NamedTuple):
    prompt: str


class _Prompted(NamedTuple):
    """What :meth:`GenerationService._check_output` reads of a submission."""

    request: _Prompt


def base_size(env, model: str) -> tuple[int, int]:
    """A model's native size, as the runner knows it (``env.models.native_size``: from the
    checkpoint's family, without loading it). A name the runner cannot resolve gets SD1's
    512 x 512, so that the request is still built and validation names the bad model."""
    from runner.errors import ModelError
    from runner.models.families import native_size

    try:
        return env.models.native_size(model)
    except (ModelError, OSError):
        return native_size("sd1")


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
    """Submits generations as jobs of ``jobs`` (a :class:`bot.services.jobs.JobService`)
    and reads and changes past generations. One per bot."""

    def __init__(self, env, database, settings, jobs):
        self.env = env
        self.db = database
        self.settings = settings
        self.jobs = jobs
        self.history = History.for_environment(database, env)

    def check_prompt(self, prompt: str, negative: str, dest: Destination) -> None:
        """Plugins' prompt moderation (``easel_check_prompt``); raises :class:`Refused`."""
        reason = self.env.pm.hook.easel_check_prompt(
            prompt=prompt, negative=negative, user_id=dest.user_id, nsfw_allowed=dest.nsfw_allowed
        )
        if reason:
            raise Refused(str(reason))

    async def submit(self, submission: Submission, dest: Destination) -> Ticket:
        """Store and queue a generation; the job is in the database before this returns.
        Raises :class:`Refused` (moderation), the job service's
        :class:`~bot.services.jobs.QueueFull`, or the data layer's errors (an unknown
        LoRA, a LoRA of another family...): nothing is stored then."""
        self.check_prompt(submission.request.prompt, submission.request.negative, dest)
        stored = await self.jobs.asubmit(
            dest.user_id,
            generation_request(submission),
            roles=dest.role_ids,
            guild_id=dest.guild_id,
            channel_id=dest.channel_id,
            parent_id=submission.parent_id,
            previews=bool(self.settings.previews),
        )
        return Ticket(
            stored.job_id,
            stored.generation_id,
            stored.position,
            stored.seed,
            submission,
            dest,
            stored.estimated_wait_s,
        )

    # -- the queue ---------------------------------------------------------------------
    async def cancel(
        self, user_id: int, job_id: int | None = None, *, admin: bool = False
    ) -> list[int]:
        """Cancel one job (the user's own, or any for ``admin``), or every job of the
        user's that waits or runs; a running job stops at its next sampling step.
        Returns the ids cancelled. Raises :class:`~bot.services.jobs.JobNotFound` or
        :class:`~bot.services.jobs.JobAlreadyFinished` for one named job."""
        if job_id is not None:
            await self.jobs.acancel(job_id, user_id, admin=admin)
            return [job_id]
        return await asyncio.to_thread(self._cancel_all, user_id)

    def _cancel_all(self, user_id: int) -> list[int]:
        active = self.db.read_sync(
            db_jobs.list_jobs, statuses=db_jobs.ACTIVE_STATUSES, user_id=user_id
        )
        cancelled = []
        for job in active:
            try:
                self.jobs.cancel(job.id, user_id)
            except (JobNotFound, JobAlreadyFinished):
                continue
            cancelled.append(job.id)
        return cancelled

    async def queue(self) -> tuple[list[JobInfo], bool]:
        """What runs and waits, in running order, and whether the queue is paused."""
        return await asyncio.to_thread(self.jobs.queue), self.jobs.paused

    def position(self, job_id: int) -> int | None:
        """A waiting job's 1-based place (0 running, None unknown); in memory, quick."""
        return self.jobs.runner.position(str(job_id))

    def estimate_wait(self, job_id: int) -> float | None:
        """Seconds until the job starts, from recent timings (None while unknown)."""
        return self.jobs.estimate_wait(job_id)

    # -- results -----------------------------------------------------------------------
    def check_outputs(self, generation, dest: Destination) -> list[str | None]:
        """The safety hook's verdict on each output of ``generation`` (blocking: call
        it off the event loop): None to show it, else the reason."""
        outputs = sorted(generation.outputs, key=lambda o: o.index)
        prompted = _Prompted(_Prompt(generation.prompt))
        return [self._check_output(o, prompted, dest) for o in outputs]

    def _check_output(self, image: Any, submission: Any, dest: Destination) -> str | None:
        """The safety hook on one stored image (``image.path`` in the data folder) of a
        submission (``submission.request.prompt``); a failing check withholds it."""
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


def result_parameters(generation) -> dict[str, Any]:
    """The parameters a result message summarises, read back from the stored
    generation (so a result posted after a restart reads the same)."""
    params = request_from_generation(generation).to_parameters()
    params["seed"] = generation.seed
    params["init_image"] = (generation.parameters or {}).get("init_image")
    return params
