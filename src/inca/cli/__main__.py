"""``python -m inca.cli``: the ``inca`` command."""

import sys

from inca.cli import main

sys.exit(main())
