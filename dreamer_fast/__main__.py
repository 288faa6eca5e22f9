"""`python -m dreamer_fast` = the `dreamer-fast` command."""

import sys

from dreamer_fast.cli import main

sys.exit(main())
