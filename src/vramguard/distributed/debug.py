"""A page for PyTorch's distributed debug server that shows vramguard's rank table.

``torch.distributed.debug.start_debug_server`` (experimental, PyTorch 2.10+, needs jinja2 and
aiohttp) serves stacks and flight-recorder traces of every rank from rank 0; with this handler
its navigation also has "vramguard", the same table as :func:`vramguard.distributed.table`::

    from torch.distributed.debug import start_debug_server
    from torch.distributed.debug._debug_handlers import default_handlers
    from vramguard.distributed import debug_handler

    start_debug_server(handlers=[*default_handlers(), debug_handler()])

The page is rendered in the debug server's own process (forked from rank 0), which reads the
summaries from the job's store at ``MASTER_ADDR:MASTER_PORT`` like ``vramguard ranks`` does.
This module imports torch's private ``_frontend``: importing it fails where that is absent, and
:func:`vramguard.distributed.debug_handler` turns that into an ``EnvironmentProblem``.
"""

from __future__ import annotations

import html
import os
from typing import Any

from torch.distributed.debug._frontend import DebugHandler, NavLink, Route

_TEMPLATE = """
{% extends "base.html" %}
{% block header %}
  <h1>{% block title %}vramguard{% endblock %}</h1>
{% endblock %}
{% block content %}
<pre>{{ table }}</pre>
{% endblock %}
"""


class VramguardHandler(DebugHandler):
    """The ``/vramguard`` page and the ``vramguard`` periodic dump: the rank table as text.
    A module-level class so that a ``spawn``-started debug server can pickle it."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def routes(self) -> list[Route]:
        return [Route("/vramguard", self._handle)]

    def nav_links(self) -> list[NavLink]:
        return [NavLink("/vramguard", "vramguard")]

    def templates(self) -> dict[str, str]:
        return {"vramguard.html": _TEMPLATE}

    def dump(self) -> str | None:
        return self._text()

    def dump_filename(self) -> str:
        return "vramguard"

    def _text(self) -> str:
        from vramguard.distributed.ranktable import read_table
        from vramguard.distributed.store import connect

        address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT')}"
        try:
            store = connect(address, timeout_s=self.timeout_s)
            return str(read_table(store, timeout_s=self.timeout_s))
        except Exception as exc:  # the page says what failed instead of a 500
            return f"vramguard: could not read the rank table from {address}: {exc}"

    def _handle(self, req: Any) -> bytes:
        # jinja's environment here does not autoescape: escape the table ourselves.
        page: bytes = req.frontend.render_template("vramguard.html",
                                                   table=html.escape(self._text()))
        return page
