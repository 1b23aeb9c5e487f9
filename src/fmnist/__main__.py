"""`python -m fmnist ...`: the same as the `fmnist` command, for environments where it is not installed."""

import sys

from fmnist.cli import main

sys.exit(main())
