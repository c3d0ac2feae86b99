"""``python -m enumwatch_devkit``: the dev stack's command line (:mod:`enumwatch_devkit.cli`)."""

import sys

from enumwatch_devkit.cli import main

sys.exit(main())
