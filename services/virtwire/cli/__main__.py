"""`python -m virtwire.cli`: the `virtwire` command (services start each other so)."""

import sys

from virtwire.cli import main

sys.exit(main())
