"""Exceptions of the training loop.

Each names what was wrong and is raised *before* anything is written to the registry,
so a failed step never moves the ``stable`` pointer.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error the training loop raises on purpose."""


class EmptyPoolError(TrainingError):
    """The sample pool holds no labeled (high or medium quality) training samples."""


class OneClassPoolError(TrainingError):
    """The labeled pool covers fewer intents than a classifier can learn from."""


class UnknownLabelError(TrainingError):
    """A label is not in the model's label map."""

    def __init__(self, labels: list[str], label_map: list[str], where: str = "") -> None:
        self.labels = sorted(set(labels))
        self.label_map = list(label_map)
        place = f" ({where})" if where else ""
        super().__init__(
            f"labels not in the label map{place}: {self.labels}; label map: {self.label_map}"
        )


class AdapterError(TrainingError):
    """An adapter directory is missing, incomplete or corrupt."""


class RegistryError(TrainingError):
    """Base class of registry errors."""


class VersionNotFoundError(RegistryError):
    """A version named by a command or a pointer does not exist in the registry."""


class RegistryPointerError(RegistryError):
    """A registry pointer is unset where one is required, or names a missing version."""


class PoolError(TrainingError):
    """The pool cannot be read or written."""


class LabelImportError(TrainingError):
    """A Label Studio export cannot be imported; nothing was written."""
