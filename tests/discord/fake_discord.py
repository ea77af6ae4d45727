"""A stand-in Discord for tests: REST and gateway on 127.0.0.1, in a background thread.

It speaks enough of Discord's API for a real discord.py client: login (``/users/@me``,
``/oauth2/applications/@me``), the gateway (HELLO, heartbeats, IDENTIFY -> READY and
GUILD_CREATE; INTERACTION_CREATE and MESSAGE_CREATE sent by the test), interaction
callbacks, webhook edits and follow-ups, channel messages with multipart files, a CDN for
attachments, and application command sync. Every request is recorded for assertions.

Channel messages honour ``enforce_nonce`` as Discord does: a second message from the bot
with the same nonce returns the first one instead of creating another, until
``forget_nonces()`` (Discord remembers a nonce a few minutes). Messages are kept and can
be read back (``GET /channels/{id}/messages``, newest first, without nonces). ``hold_posts()``
makes the server store channel messages but not answer until ``release_posts()`` (to
kill a bot between posting a result and recording that it did).

Facts it relies on (shared/NOTES.md): JSON answers carry ``Content-Type:
application/json`` exactly; interaction callbacks are answered ``{"interaction": ...}``;
plain JSON text frames work on the gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

JSON = "application/json"
EPOCH_MS = 1420070400000


def snowflake_counter(start_ms: int | None = None):
    """Increasing snowflakes whose timestamps are the time each is made, as Discord's
    (a client may look for messages "after" a moment: ``channel.history(after=...)``)."""
    last = ((start_ms or int(time.time() * 1000)) - EPOCH_MS) << 22

    def ids():
        nonlocal last
        for _ in itertools.count():
            now = (int(time.time() * 1000) - EPOCH_MS) << 22
            last = max(last + 1, now)
            yield last

    return ids()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@dataclass
class Recorded:
    """One HTTP request the bot made."""

    method: str
    path: str
    json: Any = None
    files: dict[str, bytes] = field(default_factory=dict)
    at: float = 0.0


@dataclass
class InteractionLog:
    """What happened to one interaction the test sent."""

    id: int
    token: str
    payload: dict
    sent_at: float
    callbacks: list[dict] = field(default_factory=list)
    callback_at: float | None = None
    original: dict | None = None
    edits: list[dict] = field(default_factory=list)
    followups: list[dict] = field(default_factory=list)

    @property
    def ack_seconds(self) -> float | None:
        return None if self.callback_at is None else self.callback_at - self.sent_at

    @property
    def last_text(self) -> str:
        for body in reversed([*self.edits, *self.followups]):
            if body.get("content"):
                return body["content"]
        for cb in reversed(self.callbacks):
            content = (cb.get("data") or {}).get("content")
            if content:
                return content
        return ""


class FakeDiscord:
    """The stand-in server. ``start()`` it, point the bot at :attr:`api_base` and
    :attr:`gateway_url`, then drive it with :meth:`slash`, :meth:`click`, :meth:`post_message`."""

    def __init__(
        self,
        *,
        token: str = "test-token",
        nsfw: bool = False,
        attachment_limit: int = 10 * 1024 * 1024,
    ):
        self.token = token
        self.ids = snowflake_counter()
        self.bot_id = next(self.ids)
        self.app_id = self.bot_id
        self.guild_id = next(self.ids)
        self.channel_id = next(self.ids)
        self.nsfw = nsfw
        self.attachment_limit = attachment_limit
        self.owner = self.user(next(self.ids), "owner")
        self.requests: list[Recorded] = []
        self.messages: dict[int, dict] = {}
        self.files: dict[str, bytes] = {}
        self.interactions: dict[int, InteractionLog] = {}
        self.commands: dict[str, list[dict]] = {}
        self.identified = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ws: list[web.WebSocketResponse] = []
        self._seq = 0
        self.port = 0
        self.nonces: dict[str, int] = {}
        self.nonce_repeats: list[str] = []
        self.history_reads = 0
        self._held: asyncio.Event | None = None

    # -- life cycle --------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def start(self) -> FakeDiscord:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve(ready))
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-discord", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _serve(self, ready: threading.Event) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/gateway", self._gateway)
        app.router.add_route("*", "/gateway/", self._gateway)
        app.router.add_get("/cdn/{name}", self._cdn)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            for ws in list(self._ws):
                await ws.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        """Block until ``predicate()`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for {what}")
                self._cond.wait(min(left, 0.2))

    # -- objects -----------------------------------------------------------------------
    def user(self, user_id: int | None = None, name: str = "alice", *, bot: bool = False) -> dict:
        user_id = user_id or next(self.ids)
        return {
            "id": str(user_id),
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
            "flags": 0,
        }

    @property
    def bot_user(self) -> dict:
        return self.user(self.bot_id, "easel", bot=True)

    def member(self, user: dict, roles: list[int] = (), permissions: int = 0) -> dict:
        return {
            "user": user,
            "roles": [str(r) for r in roles],
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": str(permissions),
            "nick": None,
            "avatar": None,
        }

    def channel(self) -> dict:
        return {
            "id": str(self.channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": self.nsfw,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
            "parent_id": None,
        }

    def guild(self) -> dict:
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": str((1 << 40) - 1),
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return {
            "id": str(self.guild_id),
            "name": "Test guild",
            "icon": None,
            "owner_id": self.owner["id"],
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": [self.channel()],
            "threads": [],
            "members": [self.member(self.bot_user)],
            "member_count": 2,
            "large": False,
            "unavailable": False,
            "joined_at": now_iso(),
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "premium_tier": 0,
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "preferred_locale": "en-US",
            "afk_timeout": 300,
            "premium_progress_bar_enabled": False,
        }

    def message(
        self,
        *,
        author: dict,
        content: str = "",
        attachments: list[dict] = (),
        mentions: list[dict] = (),
        reference: dict | None = None,
        components: list = (),
        message_id: int | None = None,
        flags: int = 0,
    ) -> dict:
        message_id = message_id or next(self.ids)
        data = {
            "id": str(message_id),
            "channel_id": str(self.channel_id),
            "guild_id": str(self.guild_id),
            "author": author,
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": list(mentions),
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": [],
            "pinned": False,
            "type": 0 if reference is None else 19,
            "flags": flags,
            "components": list(components),
        }
        if reference is not None:
            data["message_reference"] = {
                "message_id": reference["id"],
                "channel_id": str(self.channel_id),
                "guild_id": str(self.guild_id),
            }
            data["referenced_message"] = reference
        return data

    def attachment(self, filename: str, data: bytes, content_type: str = "image/png") -> dict:
        """Store ``data`` on the CDN and describe it as Discord does."""
        attachment_id = next(self.ids)
        name = f"{attachment_id}-{filename}"
        self.files[name] = data
        out = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": f"{self.base}/cdn/{name}",
            "proxy_url": f"{self.base}/cdn/{name}",
            "content_type": content_type,
        }
        if content_type.startswith("image/"):
            try:
                import io

                from PIL import Image

                with Image.open(io.BytesIO(data)) as im:
                    out["width"], out["height"] = im.size
            except Exception:
                pass
        return out

    # -- driving the bot -----------------------------------------------------------------
    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until a client has identified and received READY and GUILD_CREATE."""
        self.wait_for(lambda: self.identified, timeout, "the bot to identify")

    def _interaction(
        self,
        itype: int,
        data: dict,
        *,
        user: dict | None = None,
        roles: list[int] = (),
        permissions: int = 0,
        message: dict | None = None,
        dm: bool = False,
    ) -> InteractionLog:
        interaction_id = next(self.ids)
        token = f"itoken-{interaction_id}"
        user = user or self.user(4242, "alice")
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": itype,
            "token": token,
            "version": 1,
            "data": data,
            "locale": "en-US",
            "app_permissions": str((1 << 40) - 1),
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "attachment_size_limit": self.attachment_limit,
        }
        if dm:
            payload["channel_id"] = str(self.channel_id + 1)
            payload["channel"] = {"id": str(self.channel_id + 1), "type": 1, "recipients": [user]}
            payload["user"] = user
            payload["context"] = 1
        else:
            payload["guild_id"] = str(self.guild_id)
            payload["guild_locale"] = "en-US"
            payload["channel_id"] = str(self.channel_id)
            payload["channel"] = self.channel()
            payload["member"] = self.member(user, roles, permissions)
            payload["context"] = 0
        if message is not None:
            payload["message"] = message
        log = InteractionLog(interaction_id, token, payload, time.monotonic())
        with self._cond:
            self.interactions[interaction_id] = log
        self.dispatch("INTERACTION_CREATE", payload)
        log.sent_at = time.monotonic()
        return log

    def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        files: dict[str, tuple[str, bytes]] = (),
        subcommand: str | None = None,
        **kwargs: Any,
    ) -> InteractionLog:
        """Send ``/name option:value...``; ``files`` maps attachment options to (filename, bytes)."""
        opts = []
        resolved: dict[str, Any] = {}
        for key, value in (options or {}).items():
            if isinstance(value, bool):
                opts.append({"name": key, "type": 5, "value": value})
            elif isinstance(value, int):
                opts.append({"name": key, "type": 4, "value": value})
            elif isinstance(value, float):
                opts.append({"name": key, "type": 10, "value": value})
            else:
                opts.append({"name": key, "type": 3, "value": value})
        for key, (filename, data) in dict(files).items():
            attachment = self.attachment(
                filename,
                data,
                "image/png" if filename.endswith(".png") else "application/octet-stream",
            )
            resolved.setdefault("attachments", {})[attachment["id"]] = attachment
            opts.append({"name": key, "type": 11, "value": attachment["id"]})
        if subcommand:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        data = {"id": str(next(self.ids)), "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        return self._interaction(2, data, **kwargs)

    def click(self, message: dict, custom_id: str, **kwargs: Any) -> InteractionLog:
        """Click a button of ``message``."""
        return self._interaction(
            3, {"custom_id": custom_id, "component_type": 2}, message=message, **kwargs
        )

    def context_menu(self, name: str, message: dict, **kwargs: Any) -> InteractionLog:
        """Use a message context menu command on ``message``."""
        data = {
            "id": str(next(self.ids)),
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: message}},
        }
        return self._interaction(2, data, **kwargs)

    def submit_modal(
        self, opened: InteractionLog, values: dict[str, str], **kwargs: Any
    ) -> InteractionLog:
        """Submit the modal that ``opened`` answered with; ``values`` by text input label prefix."""
        modal = next(cb["data"] for cb in opened.callbacks if cb.get("type") == 9)
        rows = []
        for row in modal["components"]:
            inner = row.get("components") or ([row["component"]] if "component" in row else [])
            label = row.get("label", "")
            for comp in inner:
                text_label = comp.get("label") or label
                value = next(
                    (v for k, v in values.items() if text_label.lower().startswith(k.lower())), ""
                )
                item = {"type": 4, "custom_id": comp["custom_id"], "value": value}
                rows.append(
                    {"type": row["type"], "component": item}
                    if row["type"] == 18
                    else {"type": 1, "components": [item]}
                )
        data = {"custom_id": modal["custom_id"], "components": rows}
        return self._interaction(5, data, **kwargs)

    def post_message(
        self,
        content: str,
        *,
        author: dict | None = None,
        reply_to: dict | None = None,
        attachments: list[dict] = (),
        mention_bot: bool = True,
    ) -> dict:
        """A user posts a message in the channel (MESSAGE_CREATE)."""
        author = author or self.user(4242, "alice")
        mentions = [self.bot_user] if mention_bot else []
        data = self.message(
            author=author,
            content=content,
            attachments=attachments,
            mentions=mentions,
            reference=reply_to,
        )
        data["member"] = {k: v for k, v in self.member(author).items() if k != "user"}
        with self._cond:
            self.messages[int(data["id"])] = data
        self.dispatch("MESSAGE_CREATE", data)
        return data

    def dispatch(self, event: str, data: dict) -> None:
        self._call(self._send_event(event, data))

    async def _send_event(self, event: str, data: dict) -> None:
        self._seq += 1
        for ws in list(self._ws):
            await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    def bot_messages(self) -> list[dict]:
        """Channel messages the bot posted, oldest first."""
        with self._cond:
            return [m for m in self.messages.values() if m["author"]["id"] == str(self.bot_id)]

    def requests_to(self, method: str, fragment: str) -> list[Recorded]:
        with self._cond:
            return [r for r in self.requests if r.method == method and fragment in r.path]

    # -- gateway ---------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._ws.append(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws)
                elif op == 6:  # resume: start afresh
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
        finally:
            if ws in self._ws:
                self._ws.remove(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse) -> None:
        self._seq += 1
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": f"session-{self._seq}",
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
        }
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": self._seq, "d": ready}))
        self._seq += 1
        await ws.send_str(
            json.dumps({"op": 0, "t": "GUILD_CREATE", "s": self._seq, "d": self.guild()})
        )
        self.identified += 1
        self._changed()

    # -- REST ------------------------------------------------------------------------
    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(
            status=status, body=json.dumps(data).encode(), headers={"Content-Type": JSON}
        )

    async def _read(self, request: web.Request) -> tuple[Any, dict[str, bytes]]:
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files: dict[str, bytes] = {}
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files[part.filename or part.name] = await part.read()
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), {}

    def _store_files(self, body: dict, files: dict[str, bytes]) -> list[dict]:
        attachments = []
        for name, data in files.items():
            kind = (
                "image/png"
                if name.endswith(".png")
                else "image/webp"
                if name.endswith(".webp")
                else "image/jpeg"
            )
            attachments.append(self.attachment(name, data, kind))
        return attachments

    def hold_posts(self) -> None:
        """Store the bot's channel messages but answer none until :meth:`release_posts`."""

        async def hold() -> None:
            self._held = asyncio.Event()

        self._call(hold())

    def release_posts(self) -> None:
        """Answer the held channel messages (and later ones at once)."""

        async def release() -> None:
            if self._held is not None:
                self._held.set()
            self._held = None

        self._call(release())

    def forget_nonces(self) -> None:
        """Forget every nonce, as Discord does a few minutes after a message: a repeat
        with ``enforce_nonce`` then creates a second message."""
        with self._cond:
            self.nonces.clear()

    def channel_history(self, query: dict[str, str]) -> list[dict]:
        """``GET /channels/{id}/messages``: up to ``limit`` (at most 100) messages,
        newest first, as Discord answers; ``after`` gives the ones just after that id,
        ``before`` the ones just before it. Fetched messages carry no nonce (Discord
        hands it back only when the message is created)."""
        limit = max(1, min(100, int(query.get("limit") or 50)))
        after, before = query.get("after"), query.get("before")
        with self._cond:
            self.history_reads += 1
            found = sorted(
                (m for m in self.messages.values() if m["channel_id"] == str(self.channel_id)),
                key=lambda m: int(m["id"]),
            )
        if after is not None:
            found = [m for m in found if int(m["id"]) > int(after)][:limit]
        else:
            if before is not None:
                found = [m for m in found if int(m["id"]) < int(before)]
            found = found[-limit:]
        return [
            {k: v for k, v in m.items() if not k.startswith("_") and k != "nonce"}
            for m in reversed(found)
        ]

    def messages_with_nonce(self, nonce: str) -> list[dict]:
        """Channel messages created with ``nonce``."""
        with self._cond:
            return [
                m for m in self.messages.values() if (m.get("_sent") or {}).get("nonce") == nonce
            ]

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body, files = await self._read(request)
        with self._cond:
            self.requests.append(Recorded(request.method, path, body, files, time.monotonic()))
        try:
            response = self._route(request.method, path, body or {}, files, request)
        finally:
            self._changed()
        held = self._held
        if held is not None and request.method == "POST" and path.endswith("/messages"):
            await held.wait()
        return response

    def _route(
        self, method: str, path: str, body: dict, files: dict[str, bytes], request: web.Request
    ) -> web.Response:
        parts = path.strip("/").split("/")
        if path == "/users/@me":
            return self._json(self.bot_user)
        if path == "/oauth2/applications/@me":
            return self._json(
                {
                    "id": str(self.app_id),
                    "name": "easel",
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": self.owner,
                    "verify_key": "0" * 64,
                    "flags": 0,
                    "summary": "",
                    "team": None,
                }
            )
        if path in ("/gateway", "/gateway/bot"):
            return self._json(
                {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 1000,
                        "reset_after": 0,
                        "max_concurrency": 1,
                    },
                }
            )
        if parts[0] == "interactions" and parts[-1] == "callback":
            return self._callback(int(parts[1]), body, files)
        if parts[0] == "webhooks":
            return self._webhook(method, parts, body, files)
        if parts[0] == "channels":
            if len(parts) == 3 and parts[2] == "messages" and method == "GET":
                return self._json(self.channel_history(dict(request.query)))
            return self._channel(method, parts, body, files)
        if parts[0] == "applications" and parts[-1] == "commands":
            key = parts[3] if len(parts) > 3 and parts[2] == "guilds" else "global"
            if method == "PUT":
                stored = [
                    {
                        **c,
                        "id": str(next(self.ids)),
                        "application_id": str(self.app_id),
                        "version": "1",
                        "default_member_permissions": None,
                        "description": c.get("description", ""),
                        "type": c.get("type", 1),
                    }
                    for c in body or []
                ]
                if key != "global":
                    for c in stored:
                        c["guild_id"] = key
                self.commands[key] = stored
                return self._json(stored)
            return self._json(self.commands.get(key, []))
        return self._json({"message": f"404: {method} {path} not in the stand-in", "code": 0}, 404)

    def _log_by_token(self, token: str) -> InteractionLog | None:
        return next((i for i in self.interactions.values() if i.token == token), None)

    def _callback(self, interaction_id: int, body: dict, files: dict[str, bytes]) -> web.Response:
        log = self.interactions.get(interaction_id)
        if log is None:
            return self._json({"message": "Unknown interaction", "code": 10062}, 404)
        if log.callbacks:
            return self._json(
                {"message": "Interaction has already been acknowledged.", "code": 40060}, 400
            )
        log.callbacks.append(body)
        log.callback_at = time.monotonic()
        rtype = body.get("type")
        data = body.get("data") or {}
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction_id),
                "type": log.payload["type"],
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": bool(data.get("flags", 0) & 64),
            }
        }
        if rtype in (4, 5, 7):
            message = self.message(
                author=self.bot_user,
                content=data.get("content") or "",
                attachments=self._store_files(data, files),
                components=data.get("components") or [],
                flags=data.get("flags", 0),
            )
            message["interaction_metadata"] = {
                "id": str(interaction_id),
                "type": log.payload["type"],
                "user": log.payload.get("member", {}).get("user") or log.payload.get("user"),
                "authorizing_integration_owners": {},
            }
            log.original = message
            response["interaction"]["response_message_id"] = message["id"]
            response["resource"] = {"type": rtype, "message": message}
        return self._json(response)

    def _webhook(
        self, method: str, parts: list[str], body: dict, files: dict[str, bytes]
    ) -> web.Response:
        token = parts[2]
        log = self._log_by_token(token)
        if log is None:
            return self._json({"message": "Unknown Webhook", "code": 10015}, 404)
        if method == "PATCH" and parts[-1] == "@original":
            log.edits.append(body)
            original = log.original or self.message(author=self.bot_user)
            for key in ("content", "embeds", "components"):
                if key in body:
                    original[key] = body[key]
            if "attachments" in body or files:
                original["attachments"] = self._store_files(body, files)
            log.original = original
            return self._json(original)
        if method == "POST":
            log.followups.append(body)
            message = self.message(
                author=self.bot_user,
                content=body.get("content") or "",
                attachments=self._store_files(body, files),
                components=body.get("components") or [],
                flags=body.get("flags", 0),
            )
            message["webhook_id"] = str(self.app_id)
            return self._json(message)
        if method == "GET":
            return self._json(log.original or {})
        if method == "DELETE":
            return web.Response(status=204)
        return self._json({"message": "bad webhook call", "code": 0}, 400)

    def _channel(
        self, method: str, parts: list[str], body: dict, files: dict[str, bytes]
    ) -> web.Response:
        if len(parts) == 2:
            return self._json(self.channel())
        if parts[2] != "messages":
            return web.Response(status=204)
        if len(parts) == 3 and method == "POST":
            nonce = body.get("nonce")
            if nonce is not None and body.get("enforce_nonce"):
                first = self.messages.get(self.nonces.get(str(nonce), 0))
                if first is not None:  # Discord returns the first message, creates none
                    self.nonce_repeats.append(str(nonce))
                    return self._json(first)
            message = self.message(
                author=self.bot_user,
                content=body.get("content") or "",
                attachments=self._store_files(body, files),
                components=body.get("components") or [],
            )
            if body.get("message_reference"):
                ref = self.messages.get(int(body["message_reference"]["message_id"]))
                if ref:
                    message["message_reference"] = body["message_reference"]
                    message["referenced_message"] = ref
            message["_sent"] = body
            if nonce is not None:
                message["nonce"] = str(nonce)
                self.nonces[str(nonce)] = int(message["id"])
            self.messages[int(message["id"])] = message
            return self._json(message)
        message_id = int(parts[3])
        message = self.messages.get(message_id)
        if message is None:
            return self._json({"message": "Unknown Message", "code": 10008}, 404)
        if method == "GET":
            return self._json(message)
        if method == "PATCH":
            for key in ("content", "embeds", "components"):
                if key in body:
                    message[key] = body[key]
            if "attachments" in body or files:
                message["attachments"] = self._store_files(body, files)
            message.setdefault("_edits", []).append(body)
            return self._json(message)
        if method == "DELETE":
            message["_deleted"] = True
            self.messages.pop(message_id, None)
            return web.Response(status=204)
        return self._json({"message": "bad channel call", "code": 0}, 400)
