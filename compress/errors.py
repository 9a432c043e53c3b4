"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class CompressError(Exception):
    """Bad input (recipe, base model, data) or a build that cannot go on; the message says why."""
