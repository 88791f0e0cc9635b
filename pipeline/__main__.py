"""`python -m pipeline` runs the aigi command line."""

from pipeline.cli import run

run()
