"""The one exception type hadref raises for bad input.

Library code raises :class:`HadrefError` with a one-line message that names the file,
dataset, field, line or option and says what was expected. The CLI turns it into
``hadref: error: <message>`` on stderr and exit code 2, with no traceback.
"""


class HadrefError(ValueError):
    """Bad input (file, dataset, field, option): the message is one line for the user."""
