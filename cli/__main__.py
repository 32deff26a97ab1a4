"""``python -m raysource.cli``: the ``raysource`` command."""

import sys

from raysource.cli.main import main

sys.exit(main())
