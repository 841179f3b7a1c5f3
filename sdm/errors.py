"""The one base class of every error that means "the user's input is wrong".

Every user-facing error in sdm derives from :class:`InputError`; the CLI maps
exactly this class (and nothing else of sdm's) to one message on stderr and exit
code 2. Anything else is a bug or an outage and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a file, a flag, a config value, a label map): the message names it and the problem."""
