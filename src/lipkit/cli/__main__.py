"""``python -m lipkit.cli``: the same as the ``lipkit`` command."""

import sys

from lipkit.cli.app import main

sys.exit(main())
