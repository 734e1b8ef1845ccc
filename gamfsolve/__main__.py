"""``python -m gamfsolve``: the same as the ``gamfsolve`` console script."""

import sys

from .cli import main

sys.exit(main())
