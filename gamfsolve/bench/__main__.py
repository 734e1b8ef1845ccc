"""``python -m gamfsolve.bench``: the same as ``gamfsolve bench``."""

import sys

from . import main

sys.exit(main())
