"""One line from an exception, for the one-line messages a failed command prints."""


def last_line(err: BaseException, limit: int = 300) -> str:
    """The line of ``err`` that holds its cause: the last one, once noise is dropped.

    torchvision's download errors list every mirror tried before the cause; SQLAlchemy puts the cause first
    and then "[SQL: ...]", "[parameters: ...]" and "(Background on this error at: <url>)".
    """
    noise = ("[SQL:", "[parameters:", "(Background on this error")
    lines = [x.strip() for x in str(err).splitlines() if any(c.isalnum() for c in x)]
    lines = [x for x in lines if not x.startswith(noise)]
    return lines[-1][:limit] if lines else type(err).__name__
