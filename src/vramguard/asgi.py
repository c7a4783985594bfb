"""ASGI middleware for FastAPI and Starlette: one line to guard every endpoint.

    from vramguard.asgi import VramGuardMiddleware
    app.add_middleware(VramGuardMiddleware)

Pure ASGI (no ``BaseHTTPMiddleware``): lifespan and websocket scopes pass straight through (the
lifespan's shutdown also stops the guard's background worker, :mod:`vramguard.adapters.checker`); each
HTTP request is one Guard step attributed to its route template (``/items/{item_id}``, never the
raw path). Serves ``healthz``, ``metrics`` and (opt-in) ``status`` under ``prefix``. The logic
lives in :mod:`vramguard.adapters`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from vramguard.adapters.endpoints import Endpoints, Response
from vramguard.adapters.options import WebOptions
from vramguard.adapters.web import WebGuard

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_NULL: AbstractContextManager[None] = nullcontext()
_TEMPLATES = 1024  # route templates kept (route x mount); past it, each is found again


def route_template(scope: Scope, root_path: str = "") -> str | None:
    """The template of the route that handled ``scope`` (after the app ran), or None.

    Starlette's router (and FastAPI's) stores the matched route in ``scope["route"]``; a route
    inside a ``Mount`` gets the mount's prefix from the ``root_path`` the mount extended. Without
    it, the app's routes are matched again (``scope["app"].routes``, the Starlette app).
    """
    return _template(_find_route(scope), scope, root_path)


def _find_route(scope: Scope) -> Any:
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            try:
                match, _ = candidate.matches(scope)
            except Exception:
                continue
            if getattr(match, "name", "") == "FULL":
                return candidate
    return route


def _template(route: Any, scope: Scope, root_path: str) -> str | None:
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    mounted = str(scope.get("root_path", ""))[len(root_path):] if scope.get(
        "root_path", "").startswith(root_path) else ""
    return mounted + path


class VramGuardMiddleware:
    """Guards every HTTP request of an ASGI app; see the module docstring.

    Options: ``device`` ("auto"), ``overhead_budget`` (0.01; None reads the cheap counter at
    every request, so each request that runs alone is measured exactly: a leaking route's
    verdict within ~60 requests, for tests and load tests), ``warmup``,
    ``census_every``, and the :class:`~vramguard.adapters.options.WebOptions` fields (``prefix``,
    ``expose_status``, ``unhealthy_within``, ``unhealthy_limit``, ``unhealthy_above``,
    ``unhealthy_for``, ``cleanup_every``, ``cleanup_above``). Pass ``web`` to share one
    :class:`~vramguard.adapters.web.WebGuard` (and its verdicts) with your own code.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,  # positional-only, as Starlette's middleware factory protocol types it (mypy)
        *,
        device: str = "auto",
        overhead_budget: float | None = 0.01,
        warmup: int | None = None,
        census_every: int | None = None,
        web: WebGuard | None = None,
        clock: Callable[[], float] = time.perf_counter,
        **options: Any,
    ) -> None:
        self.app = app
        self.web = web or WebGuard(device, overhead_budget=overhead_budget, warmup=warmup,
                                   census_every=census_every, options=WebOptions.parse(**options),
                                   clock=clock)
        self._endpoints = Endpoints(self.web)
        self._templates: dict[tuple[int, str, str], tuple[Any, str | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (hot path: one prefix test, ``begin`` and ``end``)."""
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._endpoints.owns(scope["path"]):
            await _send(send, self._endpoints.answer(scope["method"], scope["path"]),
                        head=scope["method"] == "HEAD")
            return
        root_path = str(scope.get("root_path", ""))
        web = self.web
        ticket = web.begin()
        ended = False

        async def guarded_send(message: Message) -> None:
            # End the step just *before* the last body chunk leaves: once the client has the
            # response it may send the next request, which would overlap this one's reading.
            nonlocal ended
            if (not ended and message["type"] == "http.response.body"
                    and not message.get("more_body", False)):
                ended = True
                web.end(ticket, None if ticket is None else self._route(scope, root_path))
            await send(message)

        try:
            if not web.diagnosing:  # a diagnosis window is rare: no context around the app
                await self.app(scope, receive, guarded_send)
            else:
                with self._tracking(scope, root_path):
                    await self.app(scope, receive, guarded_send)
        finally:
            if not ended:  # the app raised, or never finished its response
                ended = True
                web.end(ticket, None if ticket is None else self._route(scope, root_path))

    def _route(self, scope: Scope, root_path: str) -> str | None:
        # The route's template, after the app ran. Hot path: a Starlette/FastAPI route object
        # (scope["route"]) and the mount it ran under map to one template, kept here by the
        # route's id (routes are not hashable) with the route itself, so a freed route's id
        # reused by a new one cannot match; matching and formatting it again took 3 calls a
        # request (bench/web_overhead.py --paired).
        route = scope.get("route")
        key = (id(route), scope.get("root_path", ""), root_path)
        kept = self._templates.get(key)
        if kept is not None and kept[0] is route:
            return kept[1]
        try:
            template = route_template(scope, root_path)
        except Exception:  # a strange router must not fail the request
            return None
        if route is not None and len(self._templates) < _TEMPLATES:
            self._templates[key] = (route, template)
        return template

    def _tracking(self, scope: Scope, root_path: str) -> AbstractContextManager[None]:
        # A route under diagnosis: match it now (the router sets scope["route"] only later) and
        # record allocation sites while the app runs, for ``async def`` endpoints only: they
        # run in this thread. Sync ones run in Starlette's threadpool, which the tracker
        # (thread-local) cannot follow; see vramguard.adapters.window.
        try:
            route = _find_route(scope)
            if inspect.iscoroutinefunction(getattr(route, "endpoint", None)):
                return self.web.track(_template(route, scope, root_path))
        except Exception:  # a strange router must not fail the request
            pass
        return _NULL

    def _lifespan(self, receive: Receive) -> Receive:
        # The server is shutting down: stop the web guard's worker thread with the app (and let
        # it run again if the same app is started again, as a test client may).
        async def watched() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                self.web.close()
            elif message.get("type") == "lifespan.startup":
                self.web.reopen()
            return message
        return watched

    def close(self) -> None:
        """Stop the web guard's background worker (servers without a lifespan: call it at
        shutdown; the ASGI lifespan's shutdown does it by itself)."""
        self.web.close()


async def _send(send: Send, response: Response, *, head: bool) -> None:
    await send({
        "type": "http.response.start",
        "status": response.status,
        "headers": [(b"content-type", response.content_type.encode()),
                    (b"content-length", str(len(response.body)).encode()),
                    (b"cache-control", b"no-store")],
    })
    await send({"type": "http.response.body", "body": b"" if head else response.body})
