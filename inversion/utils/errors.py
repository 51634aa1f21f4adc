"""The errors a user can fix: the command-line scripts report these in one line (exit code 2), any other
exception with its traceback (a bug).

Raise :class:`InputError` for a value the user gave (a config value, an argument, a file's content) and
:class:`MissingFileError` for a file or folder the user named that does not exist; derive the other typed
errors (a full disk, data that cannot be fetched, an output folder in use) from :class:`UserError`. The
message says what was wrong and what to do. :mod:`label_restore` and :mod:`priors` never import
:mod:`inversion` and have their own input errors, which the scripts report in one line too.
"""

__all__ = ["InputError", "MissingFileError", "UserError"]


class UserError(Exception):
    """Something the user can fix; the message (one line) says what was wrong and what to do."""


class InputError(UserError, ValueError):
    """A value the user gave is invalid. Also a ValueError, so that ``except ValueError`` still catches it.

    Built as ``InputError(problem)``, or ``InputError(problem, key)`` when one setting is at fault (a field of a
    settings object, e.g. ``max_steps``): the message is then ``"<key>: <problem>"``, and a config that holds the
    settings in a section names the full key (``attack.max_steps``).

    Attributes:
        problem: what is wrong and what to do; key: the setting at fault, or None.
    """

    def __init__(self, problem: str, key: str | None = None) -> None:
        super().__init__(problem if key is None else f"{key}: {problem}")
        self.problem, self.key = problem, key


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist. Also a FileNotFoundError."""
