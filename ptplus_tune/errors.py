"""The one exception type for errors a user can cause (bad config, missing files, bad data)."""


class PTPlusError(ValueError):
    """A problem with the user's input; the message says what to do. The CLI prints it as one line."""
