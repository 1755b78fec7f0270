"""``python -m inca ...`` (and ``torchrun ... -m inca ...``): the ``inca`` command."""

import sys

from inca.cli import main

sys.exit(main())
