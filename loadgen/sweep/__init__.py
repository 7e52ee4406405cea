"""Sweeps: a grid of load levels x server configurations, each point a run directory, then the analysis across
them (Pareto frontiers, knee, saturation, batch-size advice) as Rich tables, PNG plots and one HTML page.

Modules: ``grid`` (the sweep spec from flags or a TOML scenario), ``targets`` (starting the server of each
configuration: embedded, an external endpoint, or a user's restart command), ``point`` (one point, built from
the runner's pieces), ``runner`` (order, resume, early stop), ``analysis`` (pure numpy), ``tables`` (Rich),
``plots`` (matplotlib + HTML), ``cli`` (``loadgen sweep``), ``compare`` (``loadgen compare``).
"""
