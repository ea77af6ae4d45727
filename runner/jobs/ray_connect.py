"""Connecting to a Ray cluster: importing Ray on demand, turning on token
authentication when a token is given, and failing at once, in one sentence, when no
cluster answers at an address or it refuses this process.

Ray is optional (``pip install easel[ray]``); importing this module does not need it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.jobs.errors import BackendError

log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module, or :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError("the Ray backend needs Ray: pip install 'easel[ray]'") from exc
    return ray


AUTH_HELP = (
    "give easel the head's token (`ray get-auth-token` on the head prints it) as "
    "RAY_AUTH_TOKEN or in a file named by RAY_AUTH_TOKEN_PATH, or start the head and "
    "every worker with RAY_AUTH_MODE=disabled on a private network"
)


def _token_given(environ: Mapping[str, str]) -> str | None:
    """Where this process's Ray token comes from, if one is given."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    return None


def prepare_ray_auth(environ: dict[str, str] | None = None) -> None:
    """Ray 2.60 sends a token only in token mode: when a token is given (RAY_AUTH_TOKEN
    or RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset, turn token mode on for this
    process (and the processes it starts)."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE") or not _token_given(environ):
        return
    environ["RAY_AUTH_MODE"] = "token"
    if environ is os.environ and "ray" in __import__("sys").modules:
        try:  # Ray read its configuration at import: read it again
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        except Exception:  # pragma: no cover - another Ray version
            log.debug("could not refresh Ray's configuration", exc_info=True)


def _host_port(address: str | None) -> tuple[str, int] | None:
    if not address or address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once, in one sentence, when nothing answers at ``address`` (``HOST:PORT``)
    or its cluster refuses this process's authentication (Ray itself retries for a
    minute, logging InvalidAuthToken, then says only that it could not connect)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        raise BackendError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one there "
            "with `ray start --head`, or correct the Ray address"
        ) from None
    ray = import_ray()
    try:
        from ray._raylet import GcsClient
    except ImportError:  # pragma: no cover - another Ray version
        return
    try:
        GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        given = _token_given(os.environ)
        if given:
            problem = f"rejected the authentication token from {given}"
        else:
            problem = (
                "requires an authentication token (Ray turns token authentication on by default)"
            )
        raise BackendError(f"the Ray cluster at {address} {problem}: {AUTH_HELP}") from None
    except Exception:  # anything else: ray.init reports it
        log.debug("probing the Ray cluster at %s failed", address, exc_info=True)


def connect_ray(address: str | None, namespace: str, **init_kwargs: Any) -> bool:
    """``ray.init`` at ``address`` (None: a local cluster) in ``namespace``, without the
    workers' logs on this terminal, unless Ray is connected already (False then).
    Authentication problems and a missing cluster raise :class:`BackendError` with one
    sentence saying what to do."""
    prepare_ray_auth()
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_ray_address(address)
    kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False, **init_kwargs}
    if address:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ray.exceptions.AuthenticationError as exc:
        raise BackendError(
            f"the Ray cluster at {address} refused this process: {AUTH_HELP}"
        ) from exc
    except ConnectionError as exc:
        raise BackendError(f"no Ray cluster at {address!r}: {exc}") from exc
    return True
