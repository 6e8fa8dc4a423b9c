"""The two kinds of failure a user can act on.

`InputError` is bad input: the message says what to change. `ModelUnavailableError` is a model that
cannot be loaded (not cached and no network, a partial download, a folder in the wrong layout): the
message names the model and how to get it. The UI turns both into `gr.Error`, the CLI into one line
on stderr and a non-zero exit.
"""


class InputError(ValueError):
    """A request, file or option the user supplied is invalid; the message says what to change."""


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded; the message names it and how to make it available."""


class Cancelled(RuntimeError):
    """A job was stopped by the user before it finished."""
