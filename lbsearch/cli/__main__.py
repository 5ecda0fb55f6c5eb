"""``python -m lbsearch.cli``: the ``lbsearch`` command."""

import sys

from lbsearch.cli.main import main

sys.exit(main())
