"""`python -m lesion.cli`."""

import sys

from lesion.cli import main

sys.exit(main())
