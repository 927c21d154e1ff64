"""``python -m npdiff``: the command line of ``npdiff.cli``."""

import sys

from npdiff.cli import main

sys.exit(main())
