"""Flask extension: ``VramGuard(app)``, or ``guard = VramGuard()`` then ``guard.init_app(app)`` in
an application factory. Several apps per process each get their own guard (``guard.web(app)``).

Endpoints (``/vramguard/healthz``, ``metrics``, opt-in ``status``) are served by the WSGI layer in
front of Flask, so they need no Flask routes. Note: every guard in a process reads the same
process memory; per-app verdicts separate apps only as far as their requests do not overlap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vramguard.wsgi import ROUTE_KEY, VramGuardWSGI

if TYPE_CHECKING:
    from flask import Flask

    from vramguard.adapters.web import WebGuard

EXTENSION = "vramguard"


_TRACKING_KEY = "vramguard.tracking"


def _remember_route() -> None:
    # Runs inside Flask's request context: the matched rule is the route template.
    from flask import current_app, request

    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule
        web = current_app.extensions.get(EXTENSION)
        if web is not None and web.diagnosing:
            # The route is under diagnosis: record allocation sites in this thread (the view's)
            # until the request context is torn down. ``track`` never raises.
            tracking = web.track(rule.rule)
            tracking.__enter__()
            request.environ[_TRACKING_KEY] = tracking


def _stop_tracking(error: BaseException | None = None) -> None:
    from flask import request

    tracking = request.environ.pop(_TRACKING_KEY, None)
    if tracking is not None:
        tracking.__exit__(None, None, None)


class VramGuard:
    """Guards a Flask app; keyword options as for :class:`~vramguard.wsgi.VramGuardWSGI`."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, **options: Any) -> None:
        """Wrap ``app`` (per-app ``options`` override the constructor's)."""
        if EXTENSION in app.extensions:
            return  # already guarded: wrapping twice would count every request twice
        middleware = VramGuardWSGI(app.wsgi_app, **{**self._options, **options})
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.before_request(_remember_route)
        app.teardown_request(_stop_tracking)
        app.extensions[EXTENSION] = middleware.web

    @staticmethod
    def web(app: Flask) -> WebGuard:
        """The :class:`~vramguard.adapters.web.WebGuard` of ``app`` (KeyError if not guarded)."""
        web: WebGuard = app.extensions[EXTENSION]
        return web
