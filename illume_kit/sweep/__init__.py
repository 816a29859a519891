"""Ablation sweeps: one YAML file of override axes -> frozen runs -> a results table.

The pipeline, one module per step (all torch-free; runs train in their own processes):

- ``spec``: the sweep file (``base``, ``overrides``, ``grid``, ``zip``, ``variants``, ``seeds``,
  ``exclude``, ``max_runs``, ``metrics``, ``stages``, ``shared``), validated by pydantic;
- ``expand``: the runs it means, each named by a hash of its overrides;
- ``shared``: content-addressed upstream stages (teacher, tokenizer) trained once and shared;
- ``plan``: every run validated with ``load_recipe`` before anything is written, then frozen;
- ``launchers`` + ``runner``: each step a process (local or slurm), state in ``run.json``,
  reruns skip finished runs and resume the rest;
- ``results``: mean ± std over seeds, best and better/worse marks, md/csv/json/latex and a plot.
"""

from illume_kit.sweep.plan import Plan, SweepPlanError, plan_sweep
from illume_kit.sweep.spec import SweepError, SweepSpec, load_sweep

__all__ = ["Plan", "SweepError", "SweepPlanError", "SweepSpec", "load_sweep", "plan_sweep"]
