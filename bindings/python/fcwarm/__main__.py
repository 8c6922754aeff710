"""``python3 -m fcwarm`` runs the CLI."""
import sys

from .cli import main

sys.exit(main())
