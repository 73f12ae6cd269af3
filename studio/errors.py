"""The one user-error base class.

Every error whose message is meant for the person at the keyboard (an out-of-range slider, a
blank drawing, a CSV with text in it, an empty prompt, a scheduler the model cannot use)
subclasses :class:`UserError`. The tabs show its text as it is; any other exception is a bug,
logged with its traceback and shown as ``Type: text``. This module imports nothing, so every
layer (``data`` upwards) can subclass it.
"""


class UserError(ValueError):
    """Input the studio cannot use; the message says what to do instead."""
