"""`python -m xtrace_catch`."""
import sys

from .cli import main

sys.exit(main())
