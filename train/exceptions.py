"""Errors raised by training and evaluation."""


class TrainError(Exception):
    """Base class for training errors."""


class TrainConfigError(TrainError, ValueError):
    """A training setting is wrong (the message names it and its value)."""


class LaunchError(TrainError):
    """The DeepSpeed launcher exited with an error (the message carries the log's tail)."""


class RunError(TrainError, ValueError):
    """A run directory lacks a record the step needs, or its run cannot be used for it (the message
    names the directory or run)."""


class EvalError(TrainError, ValueError):
    """An evaluation set or item is unknown or malformed (the message names it)."""


class GateRefused(TrainError):
    """The eval gate refused a candidate; `report` says which checks failed."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report
