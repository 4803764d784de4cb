"""The one exception type the CLI turns into a one-line message."""


class ExportError(Exception):
    """A problem with the user's input, phrased as `what is wrong; how to fix it`."""
