"""The pure layer: schedules, request sources, records and metrics.

Nothing under ``loadgen.core`` imports aiohttp, gevent, locust, tritonclient or rich, so that the asyncio runner and
the Locust front end share one implementation of everything a number in a report depends on, and so that all of it
can be tested with a fake clock.
"""
