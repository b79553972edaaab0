"""``python -m execution_engine`` is ``execd``."""

import sys

from execution_engine.cli import main

sys.exit(main())
