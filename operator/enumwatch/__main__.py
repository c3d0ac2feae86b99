"""``python -m enumwatch`` runs the command line."""

import sys

from enumwatch.cli.main import main

sys.exit(main())
