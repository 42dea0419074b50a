"""``python -m azmanagers``: the same as the ``azm`` command."""

import sys

from azmanagers.cli import main

sys.exit(main())
