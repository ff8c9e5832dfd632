"""Every error the registry raises on bad input or a failed check.

Each check that guards trust raises a `VerificationError` whose `check` names it, so a refusal says
which rule it broke ("manifest-signature", "channel-rollback", ...). Callers fail closed: none of
these is ever caught to carry on with unverified data.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of everything the registry raises deliberately."""


class ModelImportError(RegistryError):
    """A model could not be imported; the store is left unchanged."""


class SafetensorsHeaderError(RegistryError):
    """A safetensors file whose header is malformed or inconsistent with the file."""


class NotFoundError(RegistryError):
    """A version, channel, key or file that does not exist."""


class KeyError_(RegistryError):
    """A key file that cannot be created, read or decrypted."""


class PolicyError(RegistryError):
    """A trust policy change that would be invalid (e.g. a role left below its threshold)."""


class ProposalConflict(RegistryError):
    """A promotion that contradicts the proposal already awaiting signatures on that channel."""


class VerificationError(RegistryError):
    """A trust check failed. `check` names the check, e.g. ``manifest-signature``."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check
