"""`python -m kovocab` is the `kovocab` command."""

import sys

from kovocab.cli import main

sys.exit(main())
