"""A plugin module that ends the interpreter when imported."""

import sys

sys.exit(3)
