"""The one error type a user sees: a message naming the flag or file and the fix, exit code 2."""


class UsageError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits with code 2."""


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss became NaN); printed as one line, exit code 1."""


def warn(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
