"""``python -m trurn``: the same as the ``trurn`` command."""

import sys

from ._cli import main

sys.exit(main())
