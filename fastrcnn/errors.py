"""The one exception type a user of fastrcnn ever sees."""


class Error(ValueError):
    """A problem with a user's input (prototxt, weights, dataset, option), with a message that names it.

    The command-line tools print the message alone and exit non-zero.
    """
