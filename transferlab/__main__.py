"""``python -m transferlab``: the command line (also what torchrun runs)."""

import sys

from .cli.main import main

sys.exit(main())
