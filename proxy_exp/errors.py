"""The errors proxy-exp raises for what a user can fix: the command line prints them as one line (launchers/app.py
run_app) that names the setting, file or service and says what to do; anything else is a bug and keeps its traceback.
ValueError and FileNotFoundError raised with such a message are treated the same way."""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an error's text (its type's name when it has none): what a one-line report shows."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ProxyExpError(Exception):
    """A problem with the user's input, settings or environment, said in one line with the fix."""


class TrackingUnavailable(ProxyExpError):
    """The MLflow tracking store does not answer (a server that is down, a store that cannot be opened)."""


class TrainingDiverged(ProxyExpError):
    """The training loss became NaN or infinite: the unit stopped at its last good checkpoint."""


class OutputNotWritable(ProxyExpError):
    """An output folder cannot be written (permissions, a full disk)."""
