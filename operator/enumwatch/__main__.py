"""``python -m enumwatch`` runs the command line."""

import sys

from enumwatch.cli import main

sys.exit(main())
