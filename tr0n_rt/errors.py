"""Typed errors. Each message names the problem and what to do next."""


class Tr0nError(Exception):
    """Base class of every error tr0n-rt raises on purpose."""


class ConfigError(Tr0nError, ValueError):
    """A configuration value, option or file field is wrong."""


class CheckpointError(Tr0nError):
    """A weights file is missing, unreadable, corrupt or of the wrong layout."""


class UnknownModelError(ConfigError, KeyError):
    """A model, family or preset name is not known."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(Tr0nError, ValueError):
    """A tensor has the wrong shape for the model it is fed to."""


class PromptError(Tr0nError, ValueError):
    """A prompt, class or condition cannot be used."""


class BundleError(Tr0nError):
    """A bundle folder, its manifest or one of its files is missing, invalid or tampered with."""


class BundleVersionError(BundleError):
    """A bundle written in another version of the bundle format: re-export it with this tr0n-rt."""


class BackendError(Tr0nError, RuntimeError):
    """An engine or execution backend is unavailable or failed."""


def unknown_name(kind: str, name: str, known) -> UnknownModelError:
    """An UnknownModelError that lists what is known."""
    known = sorted(known)
    return UnknownModelError(f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}")
