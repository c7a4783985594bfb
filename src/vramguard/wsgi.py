"""WSGI middleware for any WSGI app (Flask, Django, Falcon, ...): the same guard and endpoints as
:mod:`vramguard.asgi`.

    from vramguard.wsgi import VramGuardWSGI
    app.wsgi_app = VramGuardWSGI(app.wsgi_app)      # or wrap any WSGI callable

A request ends when the app returns its response iterable (before the server sends it). The route
template is read from ``environ["vramguard.route"]`` (set by :mod:`vramguard.flask`) or from a
``route_of(environ)`` callable you pass; without either, requests are counted as "<unmatched>".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from vramguard.adapters.endpoints import Endpoints
from vramguard.adapters.options import WebOptions
from vramguard.adapters.web import Ticket, WebGuard

ROUTE_KEY = "vramguard.route"
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


class VramGuardWSGI:
    """Guards every request of a WSGI app; options as for
    :class:`~vramguard.asgi.VramGuardMiddleware`."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        device: str = "auto",
        overhead_budget: float | None = 0.01,
        warmup: int | None = None,
        census_every: int | None = None,
        web: WebGuard | None = None,
        route_of: Callable[[dict[str, Any]], str | None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        **options: Any,
    ) -> None:
        self.app = app
        self.web = web or WebGuard(device, overhead_budget=overhead_budget, warmup=warmup,
                                   census_every=census_every, options=WebOptions.parse(**options),
                                   clock=clock)
        self._route_of = route_of
        self._endpoints = Endpoints(self.web)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point (hot path: one prefix test, ``begin``; ``end`` when the body is done)."""
        path = environ.get("PATH_INFO", "")
        if self._endpoints.owns(path):
            method = environ.get("REQUEST_METHOD", "GET")
            response = self._endpoints.answer(method, path)
            start_response(f"{response.status} {_REASONS.get(response.status, '')}".strip(), [
                ("Content-Type", response.content_type),
                ("Content-Length", str(len(response.body))),
                ("Cache-Control", "no-store"),
            ])
            return [b"" if method == "HEAD" else response.body]
        ticket = self.web.begin()
        try:
            if self.web.diagnosing and self._route_of is not None:
                # A route under diagnosis: record allocation sites while the app runs (this is
                # the handler's thread). Flask does this in its own hooks (vramguard.flask).
                with self.web.track(self._safe_route(environ)):
                    return self.app(environ, start_response)
            return self.app(environ, start_response)
        finally:
            # The step ends when the app returns, before the server writes the body: once the
            # client has the response it may send the next request, which would overlap this
            # one's reading. A streamed body's generator runs later, outside the step.
            self._end(ticket, environ)

    def close(self) -> None:
        """Stop the web guard's background worker thread (a daemon: call it at shutdown where the
        server lets you; see :mod:`vramguard.adapters.checker`)."""
        self.web.close()

    def _safe_route(self, environ: dict[str, Any]) -> str | None:
        try:
            return self._route_of(environ) if self._route_of is not None else None
        except Exception:  # a broken route_of must not fail the request
            return None

    def _end(self, ticket: Ticket | None, environ: dict[str, Any]) -> None:
        route = None
        if ticket is not None:
            try:
                route = environ.get(ROUTE_KEY) or (self._route_of(environ) if self._route_of
                                                   else None)
            except Exception:  # a broken route_of must not fail the request
                route = None
        self.web.end(ticket, route)
