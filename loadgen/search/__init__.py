"""``loadgen search``: the highest load that meets a ``--fail-on`` condition, with a stated confidence.

- ``confidence``: judging one condition at one load (order-statistic and Clopper-Pearson bounds; pure);
- ``algorithm``: the bracket and the bisection over ``run_step(load, prior) -> StepResult`` (pure);
- ``saturation``: over-saturation from a step's records (and a live observer);
- ``step``: a step as a real level through ``loadgen.level.pipeline``; ``run``, ``output``, ``cli``: the command.
"""
