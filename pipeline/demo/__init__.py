"""The demo: the whole flow on photos shipped inside installed packages.

`steps` runs the stages through `aigi` commands (the command runner is the caller's) and writes the report; `data`
cuts the photos into crops and trains the small fallback fake makers.
"""

from aigi.pipeline.demo.steps import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
