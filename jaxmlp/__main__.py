"""``python -m jaxmlp``: the command line."""
import sys

from jaxmlp.cli import main

sys.exit(main())
