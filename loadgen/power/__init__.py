"""Power and energy: a side-car process samples a power source into ``power.jsonl`` on the records' monotonic
clock, and ``energy.py`` turns the samples into per-level energy figures (J/token beside p99 latency).

Modules: ``sources`` (nvml, triton, nvidia-smi, none), ``sidecar`` (the sampling process), ``energy`` (pure
arithmetic over samples), ``monitor`` (what ``loadgen run`` calls), ``plot`` (the power trace PNG), ``cli``
(``loadgen power``).
"""
