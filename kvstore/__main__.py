"""`python -m kvstore ...` is the `kvstore` command (for environments without its script)."""

import sys

from kvstore.cli.main import main

sys.exit(main())
