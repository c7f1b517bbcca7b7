"""``python -m brainharness.cli`` = the ``brainharness`` command."""
import sys

from . import main

sys.exit(main())
