"""`aigi demo`: the whole flow on photos shipped inside installed packages.

`steps` runs the stages through the real command line and writes the report; `data` cuts the photos into crops and
trains the small fallback fake makers.
"""

from aigi.pipeline.demo.steps import register, run, run_demo

__all__ = ["register", "run", "run_demo"]
