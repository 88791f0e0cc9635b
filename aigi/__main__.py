"""`python -m aigi` runs the aigi command line."""

from aigi.cli import run

run()
