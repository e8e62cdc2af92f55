"""`python -m simulations.cli ...`: the same as `fedctx ...`."""

import sys

from simulations.cli import main

sys.exit(main())
