"""The two kinds of error a job reports to its user, each worded to name the setting to fix and how.

`mlabatch` exits 2 on a SettingsError and 1 on a CannotRunError (pipelines/checks.py raises both).
"""


class SettingsError(ValueError):
    """Settings that cannot work: a misspelled key, a wrong type, a table name that cannot be a table here."""


class CannotRunError(RuntimeError):
    """The job cannot run as set up: MLflow unreachable, a missing source, a model of the wrong kind, a
    target of another shape, a converted model in the way."""
