"""User-facing errors: the CLI prints them as one ``error: ...`` line and exits 2."""


class UserError(ValueError):
    """A mistake the user can fix (bad option, missing file, wrong shape...).

    The message says what to do; the CLI shows it without a traceback.
    """


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM at an iteration boundary, after its checkpoint.

    The message says where it stopped and how to continue; the CLI shows it and exits 130.
    """
