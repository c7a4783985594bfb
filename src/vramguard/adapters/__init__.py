"""Adapters that put the Guard where users live: web servers (ASGI, WSGI, Flask) and pytest.

The framework-free logic lives here (``web.WebGuard``: per-request bookkeeping, per-route
attribution, clean-up, health and the ``/vramguard/*`` endpoints); ``vramguard.asgi``,
``vramguard.wsgi`` and ``vramguard.flask`` are thin shells around it.
"""
