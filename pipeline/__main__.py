"""`python -m pipeline` runs the aigi command line."""

import sys

from pipeline.cli import main

sys.exit(main())
