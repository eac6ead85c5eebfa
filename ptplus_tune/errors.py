"""The one exception type for errors a user can cause (bad config, missing files, bad data), and how any error is
shown in one line."""


class PTPlusError(ValueError):
    """A problem with the user's input; the message says what to do. The CLI prints it as one line."""


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first line of an error's text (its type's name when it has none), at most `limit` characters: how a
    library's multi-line error appears inside one of our one-line messages and log lines."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text.splitlines()[0].strip()[:limit]
