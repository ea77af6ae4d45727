"""Building submissions from what people send: ``/imagine`` options, a reply to an image,
the Remix menu, and the result buttons. Policy checks happen here, once, for all of them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import discord

from bot.discord import context
from bot.services.generation import Destination, Submission, base_size, request_from_generation
from bot.services.moderation import Refused
from bot.services.operator_workflows import (
    PNG_RUN_PREFIX,
    OperatorWorkflows,
    is_workflow_template,
)
from bot.services.parsing import Limits, size_for_aspect
from bot.services.request_builder import build_request
from bot.services.uploads import store_input_image
from runner.errors import TemplateError
from runner.files import clean_filename
from runner.images import sha256_bytes
from runner.templates import GenerationRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def sampler_names(env) -> list[str]:
    """The KSampler's sampler names."""
    return _choices(env, "sampler_name")


def scheduler_names(env) -> list[str]:
    """The KSampler's scheduler names."""
    return _choices(env, "scheduler")


def _choices(env, input_name: str) -> list[str]:
    node = env.node_types.get("KSampler")
    if node is None:
        return []
    for item in node.inputs:
        if item.name == input_name:
            choices = item.choices(env) if callable(item.choices) else item.choices
            return list(choices or [])
    return []


def image_attachment(message: discord.Message) -> discord.Attachment | None:
    """The first image attached to a message, if any."""
    for attachment in message.attachments:
        kind = (attachment.content_type or "").split(";")[0]
        if kind.startswith("image/") or attachment.filename.lower().endswith(IMAGE_SUFFIXES):
            return attachment
    return None


class RequestBuilder:
    """Turns Discord input into :class:`Submission` objects for one bot."""

    def __init__(self, bot):
        self.bot = bot

    @property
    def settings(self):
        return self.bot.settings

    def admit(self, user: discord.abc.User, guild_id: int | None) -> Limits:
        """Ban list, DMs and cooldown; returns the user's limits. Raises :class:`Refused`."""
        who = context.requester(self.bot, user, guild_id)
        gate = self.bot.gate
        gate.check_user(who)
        gate.check_cooldown(who)
        return gate.limits(who)

    def parse(
        self, text: str, options: dict[str, Any], defaults, limits: Limits, **kwargs: Any
    ) -> GenerationRequest:
        """:func:`build_request` with this bot's models, samplers and schedulers (the
        pair checked too), then the prompt ban list."""
        env = self.bot.env
        request = build_request(
            text,
            options=options,
            defaults=defaults,
            limits=limits,
            base_size=lambda model: base_size(env, model),
            samplers=sampler_names(env) or None,
            schedulers=scheduler_names(env) or None,
            models=env.models.checkpoint_names(),
            clip_model=self.settings.clip_model,
            **kwargs,
        )
        self.bot.gate.check_prompt(request.prompt, request.negative)
        return request

    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        options: dict[str, Any],
        image: discord.Attachment | None = None,
    ) -> tuple[Submission, Destination]:
        """``/imagine``: prompt and options (and an optional init image)."""
        limits = self.admit(interaction.user, interaction.guild_id)
        defaults = await context.user_defaults(self.bot, interaction.user)
        init_image = None
        if image is not None:
            data = await self.read_attachment(image)
            init_image, size = await asyncio.to_thread(self._store, data)
            defaults = await asyncio.to_thread(self._fit_defaults, defaults, size)
        # Off the loop: the model's native size and the model list may read files.
        request = await asyncio.to_thread(
            self.parse, prompt, options, defaults, limits, has_image=init_image is not None
        )
        return Submission(
            request, init_image=init_image, kind="img2img" if init_image else "imagine"
        ), context.interaction_destination(interaction)

    async def from_text(
        self, user: discord.abc.User, guild_id: int | None, text: str
    ) -> Submission:
        """``@easel a lighthouse`` (a mention with no image to start from): the text is
        the prompt, inline options included, as ``/imagine`` takes it."""
        limits = self.admit(user, guild_id)
        defaults = await context.user_defaults(self.bot, user)
        request = await asyncio.to_thread(self.parse, text, {}, defaults, limits, has_image=False)
        return Submission(request, kind="imagine")

    async def img2img(
        self,
        user: discord.abc.User,
        guild_id: int | None,
        target: discord.Message,
        text: str,
        options: dict[str, Any] | None = None,
    ) -> Submission:
        """Reply-to-image and Remix: img2img on ``target``'s image. When the image is a bot
        result, its model, size and LoRAs carry over unless the text overrides them."""
        limits = self.admit(user, guild_id)
        attachment = image_attachment(target)
        if attachment is None:
            raise Refused(
                "That message has no image I can use; reply to a message with an image attached."
            )
        data = await self.read_attachment(attachment)
        parent = None
        if self.bot.user is not None and target.author.id == self.bot.user.id:
            parent = await self.bot.generations.find_by_message(target.id)
        if parent is None:
            parent = await self.bot.generations.find_by_image_hash(sha256_bytes(data))
        defaults = await context.user_defaults(self.bot, user)
        init_image, size = await asyncio.to_thread(self._store, data)
        if parent is not None:
            # A bot result: its settings carry over unless the text changes them.
            carried = request_from_generation(parent)
            defaults = dataclasses.replace(
                defaults,
                model=carried.model,
                width=carried.width,
                height=carried.height,
                steps=min(carried.steps, limits.max_steps),
                cfg=carried.cfg,
                sampler=carried.sampler,
                scheduler=carried.scheduler,
                negative=carried.negative,
            )
        else:
            defaults = await asyncio.to_thread(self._fit_defaults, defaults, size)
        request = await asyncio.to_thread(
            self.parse,
            text,
            options or {},
            defaults,
            limits,
            allow_empty_prompt=parent is not None,
            has_image=True,
        )
        if parent is not None:
            if not request.prompt:
                request = request.model_copy(update={"prompt": parent.prompt})
            if not request.loras:
                request = request.model_copy(
                    update={"loras": request_from_generation(parent).loras}
                )
        elif not request.prompt:
            raise Refused("Add a prompt after the mention to say what to make of the image.")
        return Submission(
            request, init_image=init_image, parent_id=parent.id if parent else None, kind="remix"
        )

    async def from_result(
        self,
        interaction: discord.Interaction,
        action: str,
        generation,
        index: int = 0,
        **changes: Any,
    ) -> Submission:
        """Reroll (new seed), variation (img2img of one image, low strength), upscale (a
        hires img2img pass) or reuse-seed (``changes`` hold the new prompt). On an
        operator workflow's result the workflow as it is now is applied again (its
        roles, allow list and limits; see :meth:`_within_workflow`)."""
        limits = self.admit(interaction.user, interaction.guild_id)
        base = request_from_generation(generation)
        submission = await self._button_submission(
            limits, action, generation, base, index, **changes
        )
        await self._within_workflow(interaction.user, base, submission)
        return submission

    async def _within_workflow(
        self, user: discord.abc.User, earlier: GenerationRequest, submission: Submission
    ) -> None:
        """Refuse, in words, a button's submission on an operator workflow's result that
        the workflow no longer permits: the workflow was removed or cannot be read, the
        member lacks its roles now, or the request goes beyond its allow list or limits
        as they are now. PNG runs are refused once owners turn ``@easel run`` off."""
        template = submission.request.template
        if not is_workflow_template(template):
            return
        if template.startswith(PNG_RUN_PREFIX) and not getattr(
            self.settings, "allow_run_from_png", True
        ):
            raise Refused("Running the workflow of an image is turned off on this bot.")
        folder = OperatorWorkflows(self.settings, self.bot.env)
        try:
            workflow = await asyncio.to_thread(folder.for_template, template)
        except TemplateError as exc:
            raise Refused(f"The workflow of that result cannot be used now: {exc}.") from None
        owner = user.id in self.settings.owner_set
        if not workflow.usable_by(context.role_ids(user), owner=owner):
            raise Refused(f"Workflow {workflow.name!r} is for members with certain roles only.")
        problems = workflow.check_again(
            submission.request, earlier, image=submission.init_image is not None
        )
        if problems:
            raise Refused(f"Workflow {workflow.name!r}: {'; '.join(problems)}.")

    async def _button_submission(
        self,
        limits: Limits,
        action: str,
        generation,
        base: GenerationRequest,
        index: int,
        **changes: Any,
    ) -> Submission:
        settings = self.settings
        if base.best_of is not None and not settings.clip_model:
            # The owner has since removed the CLIP model: make a plain image instead.
            base = base.model_copy(update={"best_of": None, "best_of_clip": None})
        if action in ("reroll", "rerun"):
            seed = None if action == "reroll" else base.seed
            return Submission(
                base.model_copy(update={"seed": seed}),
                generation.parameters.get("init_image"),
                generation.id,
                action,
            )
        if action == "seed":
            request = base.model_copy(update=changes)
            self.bot.gate.check_prompt(request.prompt, request.negative)
            return Submission(
                request, generation.parameters.get("init_image"), generation.id, "reuse-seed"
            )
        init_image = await asyncio.to_thread(
            self.bot.generations.init_image_from, generation, index
        )
        if action == "var":
            request = base.model_copy(
                update={
                    "seed": None,
                    "batch_size": 1,
                    "strength": settings.variation_strength,
                    "best_of": None,  # a variation of the image chosen, not another ranking
                    "best_of_clip": None,
                }
            )
            return Submission(request, init_image, generation.id, "variation")
        width = int(base.width * settings.upscale_factor) // 8 * 8
        height = int(base.height * settings.upscale_factor) // 8 * 8
        if width > limits.max_width or height > limits.max_height:
            raise Refused(
                f"Upscaling to {width}×{height} is larger than your limit of {limits.max_width}×{limits.max_height}."
            )
        request = base.model_copy(
            update={
                "batch_size": 1,
                "width": width,
                "height": height,
                "strength": settings.upscale_strength,
                "best_of": None,
                "best_of_clip": None,
            }
        )
        return Submission(request, init_image, generation.id, "upscale")

    # -- helpers ---------------------------------------------------------------------
    async def read_attachment(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes, refusing files over the upload limit before reading."""
        limit = int(self.settings.max_upload_mb * 1024 * 1024)
        if attachment.size > limit:
            raise Refused(
                f"{clean_filename(attachment.filename)} is {attachment.size / 1e6:.1f} MB, more than the "
                f"{limit / 1e6:.1f} MB allowed."
            )
        return await attachment.read()

    def _store(self, data: bytes) -> tuple[str, tuple[int, int]]:
        from PIL import Image

        name = store_input_image(self.settings, data)
        with Image.open(self.settings.input_dir / name) as im:
            return name, im.size

    def _fit_defaults(self, defaults, size: tuple[int, int]):
        """Default to the init image's aspect ratio at the model's native pixel count
        (:func:`~bot.services.parsing.size_for_aspect`: sides multiples of 8): a small
        upload is worked on at the size the model makes well, with its shape kept."""
        return dataclasses.replace(
            defaults,
            **dict(zip(("width", "height"), self.fit_size(defaults.model, size), strict=True)),
        )

    def fit_size(self, model: str, size: tuple[int, int]) -> tuple[int, int]:
        """The size img2img works at for a source of ``size``: its aspect ratio (within
        1:4 to 4:1) at ``model``'s native pixel count."""
        w, h = base_size(self.bot.env, model)
        ratio = min(4.0, max(0.25, size[0] / max(1, size[1])))
        return size_for_aspect(ratio, w * h)
