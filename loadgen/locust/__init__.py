"""The Locust front end: scenario user classes, gevent transports, an open-loop greenlet dispatcher, mergeable LLM
statistics for distributed runs, web UI additions and the run directory, all on the asyncio runner's core.

The locustfiles live in ``scenarios/``; they call ``loadgen.locust.plugin.install()`` once and subclass the users
of ``loadgen.locust.users``. Importing this package does nothing (no event listeners are registered on import).
"""
