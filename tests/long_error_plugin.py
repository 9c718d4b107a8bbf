"""A plugin module whose import fails with a long message."""

from broken_plugins import LONG_IMPORT_ERROR

raise ImportError(LONG_IMPORT_ERROR)
