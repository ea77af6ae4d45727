"""Unit tests of the bot's pieces, with real discord.py objects built from raw Discord
payloads (no network)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from types import SimpleNamespace

import discord
import pytest
from discord.webhook.async_ import AsyncWebhookAdapter
from fake_discord import FakeDiscord
from PIL import Image

from bot.discord import context, render
from bot.discord.config import (
    BadDiscordUrl,
    apply_discord_urls,
    normalise_api_base,
    normalise_gateway,
)
from bot.discord.errors import GENERIC, friendly
from bot.discord.reporting import Status
from bot.discord.requests import image_attachment
from bot.discord.views import CUSTOM_ID, ResultButton, custom_id, result_view
from bot.services.moderation import Cooldowns, Gate, Refused, Requester, banned_phrase, limits_for
from bot.services.parsing import ParseError
from bot.settings import RoleLimit
from bot.settings import Settings as BotSettings

FAKE = FakeDiscord()  # only its payload builders are used here: nothing is started


def settings(**overrides) -> BotSettings:
    return BotSettings(_env_file=None, **overrides)


@pytest.fixture
def client():
    client = discord.Client(intents=discord.Intents.default())
    client._connection.user = discord.ClientUser(state=client._connection, data=FAKE.bot_user)
    return client


def interaction(client, **kwargs) -> discord.Interaction:
    log = None

    def capture(event, data):  # _interaction dispatches; here nothing listens
        nonlocal log
        log = data

    FAKE.dispatch = capture  # type: ignore[method-assign]
    FAKE._interaction(
        kwargs.pop("itype", 2),
        kwargs.pop("data", {"id": "1", "name": "imagine", "type": 1}),
        **kwargs,
    )
    return discord.Interaction(data=log, state=client._connection)


def bot_like(**overrides):
    s = settings(**overrides)
    return SimpleNamespace(settings=s, gate=Gate(s))


# -- interactions from payloads -------------------------------------------------------------


def test_requester_and_destination_from_a_guild_interaction(client):
    FAKE.nsfw = True
    try:
        inter = interaction(
            client, user=FAKE.user(55, "bob"), roles=[111, 222], permissions=1 << 13
        )
    finally:
        FAKE.nsfw = False
    bot = bot_like(owner_ids=[1], admin_role_ids=[999])
    who = context.requester(bot, inter.user, inter.guild_id)
    assert who == Requester(user_id=55, role_ids=(111, 222), in_dm=False, owner=False)
    dest = context.interaction_destination(inter)
    assert (dest.user_id, dest.channel_id, dest.guild_id, dest.nsfw_allowed) == (
        55,
        FAKE.channel_id,
        FAKE.guild_id,
        True,
    )
    assert inter.filesize_limit == 10 * 1024 * 1024
    # manage_messages (1 << 13) makes an admin for deleting results; plain members are not.
    assert context.is_admin(bot, inter.user, inter.permissions)
    plain = interaction(client, user=FAKE.user(56, "carol"))
    assert not context.is_admin(bot, plain.user, plain.permissions)
    assert not context.interaction_destination(plain).nsfw_allowed


def test_direct_messages_can_be_refused(client):
    inter = interaction(client, user=FAKE.user(77, "dee"), dm=True)
    bot = bot_like(allow_dms=False, owner_ids=[1])
    who = context.requester(bot, inter.user, inter.guild_id)
    assert who.in_dm and who.role_ids == ()
    with pytest.raises(Refused, match="direct messages"):
        bot.gate.check_user(who)
    bot.gate.check_user(Requester(user_id=1, in_dm=True, owner=True))  # owners may


def test_messages_from_payloads_give_their_image_and_prompt(client):
    state = client._connection
    channel = discord.PartialMessageable(state=state, id=FAKE.channel_id)
    att = FAKE.attachment("cat.png", b"\x89PNG fake", "image/png")
    data = FAKE.message(
        author=FAKE.user(4242),
        content=f"<@{FAKE.bot_id}> a dog --strength 0.4",
        attachments=[att],
        mentions=[FAKE.bot_user],
    )
    message = discord.Message(state=state, channel=channel, data=data)
    assert image_attachment(message).filename == "cat.png"
    from bot.discord.cogs.remix.cog import prompt_from_mention

    assert prompt_from_mention(message.content, FAKE.bot_id) == "a dog --strength 0.4"
    text_only = discord.Message(
        state=state, channel=channel, data=FAKE.message(author=FAKE.user(1), content="hi")
    )
    assert image_attachment(text_only) is None


# -- views -------------------------------------------------------------------------------------


def test_result_buttons_carry_the_generation_id_and_come_back_from_it(client):
    view = result_view(42, 4)
    ids = [item.custom_id for item in view.children]
    assert ids[:4] == [f"easel:var:42:{i}" for i in range(4)]
    assert ids[4:8] == [f"easel:up:42:{i}" for i in range(4)]
    assert {"easel:reroll:42", "easel:seed:42", "easel:info:42", "easel:del:42"} <= set(ids)
    assert all(len(i) <= 100 for i in ids)
    single = [item.custom_id for item in result_view(7, 1).children]
    assert single == [
        "easel:reroll:7",
        "easel:var:7",
        "easel:up:7",
        "easel:seed:7",
        "easel:info:7",
        "easel:del:7",
    ]

    match = re.fullmatch(CUSTOM_ID, "easel:up:42:3")
    inter = interaction(client, itype=3, data={"custom_id": "easel:up:42:3", "component_type": 2})
    button = asyncio.run(ResultButton.from_custom_id(inter, None, match))
    assert (button.action, button.generation_id, button.index) == ("up", 42, 3)
    assert re.fullmatch(CUSTOM_ID, "easel:evil:1") is None
    with pytest.raises(ValueError):
        custom_id("evil", 1)


# -- rendering -------------------------------------------------------------------------------


def _png(tmp_path, size=(256, 256)):
    import numpy as np

    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_images_that_do_not_fit_are_sent_smaller_and_say_so(tmp_path):
    path = _png(tmp_path)
    size = path.stat().st_size
    as_png = render.fit_images([path], size + 10)
    assert as_png.files[0][0] == "easel.png" and as_png.note is None
    smaller = render.fit_images([path], size - 1)
    assert smaller.files[0][0].endswith((".webp", ".jpg")) and "upload limit" in smaller.note
    tiny = render.fit_images([path], 3000)
    assert tiny.files and "JPEG" in tiny.note and sum(len(d) for _, d in tiny.files) <= 3000
    with Image.open(io.BytesIO(tiny.files[0][1])) as im:
        assert im.width < 256
    assert render.fit_images([path], 10).files == []


def test_summary_escapes_mentions_and_markdown():
    line = render.summary_line(
        {
            "prompt": "@everyone **bold** <lora:x>",
            "seed": 1,
            "steps": 2,
            "cfg": 7.0,
            "sampler": "euler",
            "scheduler": "normal",
            "width": 64,
            "height": 64,
            "model": "tiny-random",
            "loras": [["ink", 0.8]],
        },
        generation_id=9,
    )
    assert "@everyone" not in line.replace("@\u200beveryone", "")
    assert "\\*\\*bold\\*\\*" in line and line.endswith("#9")
    assert "<lora:ink:0.8>" in line
    assert render.progress_text(3, 12).startswith("🎨 Generating: step 3 of 12")
    assert render.queued_text(1) == "⏳ Queued: you are next."


class RecordingStatus(Status):
    def __init__(self, interval):
        super().__init__(interval)
        self.shown: list[str] = []

    async def _edit(self, text, file=None):
        self.shown.append(text)


def test_progress_edits_are_throttled_but_final_texts_go_through():
    async def scenario():
        status = RecordingStatus(interval=0.2)
        for step in range(1, 20):
            await status.update(f"step {step}", progress=True)
        await asyncio.sleep(0.25)
        await status.update("step 20", progress=True)
        await status.close("done")
        await status.update("late", progress=False)
        return status.shown

    shown = asyncio.run(scenario())
    assert shown == ["step 1", "step 20", "done"]


# -- policy ------------------------------------------------------------------------------


def test_roles_raise_limits_and_owners_get_the_most():
    s = settings(
        max_steps=50,
        max_count=2,
        role_limits={10: RoleLimit(max_steps=100, max_count=4), 20: RoleLimit(max_width=3072)},
    )
    assert limits_for(s, []).max_steps == 50
    member = limits_for(s, [10])
    assert (member.max_steps, member.max_count, member.max_width) == (100, 4, 2048)
    assert limits_for(s, [], owner=True).max_width == 3072


def test_ban_list_and_cooldown():
    assert banned_phrase("A Red Cat", ["red cat"]) == "red cat"
    assert banned_phrase("scattered", ["cat"]) is None
    gate = Gate(settings(banned_words=["gore"], banned_user_ids=[13], cooldown_s=10))
    with pytest.raises(Refused, match="'gore'"):
        gate.check_prompt("some GORE please")
    with pytest.raises(Refused, match="not allowed"):
        gate.check_user(Requester(user_id=13))
    clock = [0.0]
    cooldowns = Cooldowns(10, clock=lambda: clock[0])
    cooldowns.hit(1)
    clock[0] = 4
    assert cooldowns.remaining(1) == 6
    clock[0] = 11
    assert cooldowns.remaining(1) == 0
    gate.check_cooldown(Requester(user_id=2))
    with pytest.raises(Refused, match="Please wait 10 more seconds"):
        gate.check_cooldown(Requester(user_id=2))


def test_errors_become_one_sentence_and_unexpected_ones_are_logged(caplog):
    from db.errors import NotFound

    assert (
        friendly(ParseError("steps 200 is more than your limit of 150."))
        == "Steps 200 is more than your limit of 150."
    )
    assert friendly(NotFound("generation", 5)) == "There is no result #5."
    assert "#-3" not in friendly(NotFound("generation", -3))
    with caplog.at_level(logging.ERROR):
        assert friendly(KeyError("boom")) == GENERIC
    assert "boom" in caplog.text


# -- configuration ---------------------------------------------------------------------------


def test_discord_urls_are_normalised_and_applied():
    import discord.gateway
    import discord.http

    assert normalise_api_base("http://127.0.0.1:8080") == "http://127.0.0.1:8080/api/v10"
    assert normalise_api_base("https://proxy.example/api/") == "https://proxy.example/api/v10"
    assert normalise_api_base("http://h/api/v9") == "http://h/api/v9"
    assert normalise_gateway("ws://127.0.0.1:1/gateway") == "ws://127.0.0.1:1/gateway/"
    with pytest.raises(BadDiscordUrl):
        normalise_api_base("ftp://x")
    with pytest.raises(BadDiscordUrl):
        normalise_gateway("http://x")
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        urls = apply_discord_urls("http://127.0.0.1:9", "ws://127.0.0.1:9/gw")
        assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
        assert urls.gateway == "ws://127.0.0.1:9/gw/"
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


def test_settings_read_ids_and_words_from_the_environment(monkeypatch):
    monkeypatch.setenv("EASEL_OWNER_IDS", "12")
    monkeypatch.setenv("EASEL_ADMIN_ROLE_IDS", "3,4")
    monkeypatch.setenv("EASEL_BANNED_WORDS", "gore, spiders")
    monkeypatch.setenv("EASEL_ROLE_LIMITS", '{"5": {"max_steps": 99}}')
    s = BotSettings()
    assert (s.owner_ids, s.admin_role_ids, s.banned_words) == ([12], [3, 4], ["gore", "spiders"])
    assert s.role_limits[5].max_steps == 99


# -- the safety hooks --------------------------------------------------------------------------


def test_hook_easel_check_prompt():
    from runner.plugin_manager import build_plugin_manager

    pm = build_plugin_manager(entry_points=False)

    class Strict:
        from runner import hookimpl

        @hookimpl
        def easel_check_prompt(self, prompt, negative, user_id, nsfw_allowed):
            return None if nsfw_allowed or "spider" not in prompt else "No spiders here."

    assert (
        pm.hook.easel_check_prompt(prompt="spider", negative="", user_id=1, nsfw_allowed=False)
        is None
    )
    pm.register(Strict())
    assert (
        pm.hook.easel_check_prompt(prompt="spider", negative="", user_id=1, nsfw_allowed=False)
        == "No spiders here."
    )
    assert (
        pm.hook.easel_check_prompt(prompt="spider", negative="", user_id=1, nsfw_allowed=True)
        is None
    )


def test_hook_easel_check_output(tmp_path):
    from plugins import safety
    from runner.plugin_manager import build_plugin_manager

    pm = build_plugin_manager(entry_points=False)
    assert "plugins.safety" in [pm.get_name(p) for p in pm.get_plugins()]
    env = SimpleNamespace(settings=settings(data_dir=tmp_path))
    image = Image.new("RGB", (8, 8))
    # No checker configured (or not present locally): every image passes.
    assert pm.hook.easel_check_output(image=image, prompt="x", user_id=1, env=env) is None
    env.settings.safety_checker_dir = str(tmp_path / "missing")
    assert safety.checker_folder(env.settings) is None
    assert pm.hook.easel_check_output(image=image, prompt="x", user_id=1, env=env) is None


class RecordingAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter (interaction responses go through it), recording
    instead of sending."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str, dict | None, float]] = []

    async def request(self, route, session, *, payload=None, **kwargs):
        self.calls.append((route.method, route.path, payload, time.monotonic()))
        if route.path.endswith("/callback"):
            return {"interaction": {"id": "1", "type": 2, "response_message_loading": True}}
        return FAKE.message(author=FAKE.bot_user, content=(payload or {}).get("content", ""))


def test_interactions_are_deferred_before_any_slow_work(client):
    """/imagine's first call is the defer; a refusal then edits the response in one sentence."""
    from discord.webhook.async_ import async_context

    from bot.discord.cogs.imagine.cog import ImagineCog

    order: list[str] = []

    async def slow_imagine(*args, **kwargs):
        order.append("submit")
        await asyncio.sleep(0.05)
        raise Refused("The queue is closed.")

    bot = SimpleNamespace(requests=SimpleNamespace(imagine=slow_imagine), settings=settings())
    cog = ImagineCog(bot)
    inter = interaction(client, user=FAKE.user(5, "eve"))
    adapter = RecordingAdapter()

    async def scenario():
        async_context.set(adapter)
        await cog.imagine.callback(cog, inter, "a cat")

    started = time.monotonic()
    asyncio.run(scenario())
    (m1, p1, body1, t1), (m2, p2, body2, _) = adapter.calls
    assert p1.endswith("/callback") and body1 == {"type": 5, "data": {"flags": 64}}
    assert t1 - started < 0.05 and order == ["submit"]
    assert (m2, p2) == ("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/@original")
    assert body2["content"] == "⚠️ The queue is closed."
