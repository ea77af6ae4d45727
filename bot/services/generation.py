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
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

from bot.services.history import History
from bot.services.jobs import JobAlreadyFinished, JobInfo, JobNotFound
from bot.services.moderation import Refused
from bot.services.storage import delete_unreferenced
from bot.services.uploads import input_from_output
from db import generations as db_generations
from db import jobs as db_jobs
from runner.templates import DEFAULTS, GenerationRequest, LoraRef

log = logging.getLogger(__name__)


CHECK_FAILED = (
    "The prompt check is not working right now, so the request was not queued; try again later"
)
"""What a user reads when a prompt checker raised or hung (owners get the details)."""


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
    """A request ready to queue (LoRAs by the user's names; the history service resolves
    them to library files). ``init_image`` is an input-folder name (img2img)."""

    request: GenerationRequest
    init_image: str | None = None
    parent_id: int | None = None
    kind: str = "imagine"

    def queued_request(self) -> GenerationRequest:
        """The request as it is queued: with the init image, or, without one, with the
        default strength (a txt2img request records no strength of its own)."""
        if self.init_image:
            return self.request.model_copy(update={"init_image": self.init_image})
        return self.request.model_copy(update={"init_image": None, "strength": DEFAULTS.strength})


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


async def off_loop(fn, *args: Any) -> Any:
    """``fn(*args)`` on a daemon thread of its own, awaited: for calls into plugins' hooks. A
    hook that hangs (up to the hook time limit, or for ever with none) holds that thread
    only: not the event loop, not the shared worker threads (the database, the queue), and
    not the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while the hook ran
            pass

    threading.Thread(target=target, name="easel-hook-call", daemon=True).start()
    return await future


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

    async def run_hook(self, fn, *args: Any) -> Any:
        """``fn(*args)`` (a call into plugins' hooks) off the event loop; see :func:`off_loop`."""
        return await off_loop(fn, *args)

    def check_prompt(self, prompt: str, negative: str, dest: Destination) -> None:
        """Plugins' prompt moderation (``easel_check_prompt``; blocking, up to the hook time
        limit: :meth:`submit` calls it off the event loop); raises :class:`Refused`. A checker
        that raises or hangs refuses the request (moderation fails closed) with one neutral
        sentence: its details go to the log and, from the plugin host, to the owners."""
        from runner.plugin_host import PluginHookError

        try:
            reason = self.env.pm.hook.easel_check_prompt(
                prompt=prompt,
                negative=negative,
                user_id=dest.user_id,
                nsfw_allowed=dest.nsfw_allowed,
            )
        except PluginHookError as exc:
            log.warning("prompt check of user %s failed: %s", dest.user_id, exc)
            raise Refused(CHECK_FAILED) from exc
        if reason:
            raise Refused(str(reason))

    async def submit(self, submission: Submission, dest: Destination) -> Ticket:
        """Store and queue a generation; the job is in the database before this returns.
        Raises :class:`Refused` (moderation), the job service's
        :class:`~bot.services.jobs.QueueFull`, or the data layer's errors (an unknown
        LoRA, a LoRA of another family...): nothing is stored then."""
        await self.run_hook(
            self.check_prompt, submission.request.prompt, submission.request.negative, dest
        )
        stored = await asyncio.to_thread(
            self.jobs.submit,
            dest.user_id,
            submission.queued_request(),
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
            await asyncio.to_thread(self.jobs.cancel, job_id, user_id, admin=admin)
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
        return await asyncio.to_thread(self.history.find_by_message, message_id)

    async def find_by_image_hash(self, sha256: str):
        """The generation that produced an image with this content hash, or None."""
        return await asyncio.to_thread(self.history.find_by_image, sha256)

    async def delete(self, generation_id: int, *, user_id: int, admin: bool = False) -> int | None:
        """Delete a generation (the owner's, or any for ``admin``) and the image files
        nothing else uses. Returns the Discord message id that showed it."""
        if admin:
            return await self.db.run(_delete_any, generation_id, self.settings.data_dir)
        generation = await asyncio.to_thread(self.history.get, user_id, generation_id)
        await asyncio.to_thread(self.history.delete, user_id, generation_id)
        return generation.message_id

    def init_image_from(self, generation, index: int) -> str:
        """An output of ``generation`` as an init image (for variations and upscales)."""
        outputs = sorted(generation.outputs, key=lambda o: o.index)
        if not 0 <= index < len(outputs):
            raise Refused(f"That result has no image {index + 1}.")
        return input_from_output(self.settings, outputs[index].path)


_NOT_CARRIED = {"loras", "init_image", "template", "filename_prefix"}
"""Request fields a past generation's request does not take from its stored parameters."""


def _stored_loras(items: Any) -> list[LoraRef]:
    """Stored LoRAs (dicts as the history records them, or older ``[name, weight]``
    pairs) as requested LoRAs; a weight not recorded stays unset."""
    refs = []
    for item in items or []:
        if isinstance(item, dict):
            name, weight = item.get("name"), item.get("strength_model")
            clip = item.get("strength_clip")
        elif isinstance(item, list | tuple) and item:
            name, weight, clip = item[0], item[1] if len(item) > 1 else None, None
        else:
            continue
        given: dict[str, Any] = {"strength_clip": clip}
        if weight is not None:
            given["strength_model"] = float(weight)
        refs.append(LoraRef(name=str(name), **given))
    return refs


def request_from_generation(generation, **changes: Any) -> GenerationRequest:
    """The request a past generation was made from (for reroll, variations, upscale,
    reuse seed, and reply-to-image carry-over), with ``changes`` applied. What the
    stored parameters lack takes the request's own defaults; the init image is the
    :class:`Submission`'s business, not the request's."""
    p = dict(generation.parameters or {})
    if p.get("batch_size") is None and p.get("count") is not None:  # older records
        p["batch_size"] = p["count"]
    fields = set(GenerationRequest.model_fields) - _NOT_CARRIED
    given = {k: p[k] for k in fields if p.get(k) not in (None, "")}
    given.update(
        prompt=generation.prompt,
        seed=generation.seed,
        negative=generation.negative_prompt or p.get("negative") or "",
        model=generation.model or str(p.get("model") or ""),
        loras=_stored_loras(p.get("loras")),
    )
    template = generation.template or p.get("template")
    if template and str(template).startswith(("workflow:", "png-run:")):
        given["template"] = template  # an operator workflow's results keep it (reroll, V, U)
    request = GenerationRequest(**given)
    return request.model_copy(update=changes) if changes else request


def result_parameters(generation) -> dict[str, Any]:
    """The parameters a result message summarises, read back from the stored
    generation (so a result posted after a restart reads the same)."""
    request = request_from_generation(generation)
    params = request.model_dump(mode="json", exclude={"loras", "filename_prefix", "template"})
    params["count"] = request.batch_size
    params["loras"] = [[lora.name, lora.weight] for lora in request.loras]
    params["seed"] = generation.seed
    params["init_image"] = (generation.parameters or {}).get("init_image")
    return params
