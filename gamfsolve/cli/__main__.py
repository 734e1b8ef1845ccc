"""``python -m gamfsolve.cli``: the same as the ``gamfsolve`` console script."""

import sys

from . import main

sys.exit(main())
