"""A plugin module whose import is interrupted (Ctrl-C)."""

raise KeyboardInterrupt
