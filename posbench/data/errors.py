"""The one exception the data layer raises for problems a user can fix."""


class DataError(RuntimeError):
    """A corpus could not be fetched, found or read.

    The message is one line that says what failed and what to do, so a CLI can print
    ``str(err)`` instead of a traceback.
    """
