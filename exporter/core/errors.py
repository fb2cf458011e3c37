"""Errors a user can cause. The CLIs print them as one line and exit with ``exit_code``."""


class UserError(Exception):
    """A mistake in the user's input: bad model name, bad shape, unreadable file, missing extra."""

    exit_code = 2


class MissingExtra(UserError):
    """An optional dependency is not installed."""

    def __init__(self, what: str, extra: str):
        super().__init__(f"{what} is not installed; install the [{extra}] extra: pip install 'autotimm-deploy[{extra}]'")
        self.extra = extra


class ExportFailed(Exception):
    """A format could not export this model (not the user's fault; exit 1)."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, for one-line reports."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
