"""One exception type for everything a user can fix; the CLI prints it as one line."""


class UserError(Exception):
    """A problem with the input or the environment, worded as problem and fix."""
