"""Exceptions the project raises on purpose, each carrying a one-line, user-facing message."""

from __future__ import annotations


class MoAError(Exception):
    """Base class: the message is one clear line meant for the user."""


class MoAInputError(MoAError, ValueError):
    """Bad input from the user: a topology, preset, provider, prompt or missing key (CLI exit 2)."""


class MissingCredentialsError(MoAInputError):
    """A provider's API key is not set; the message names the environment variable."""


class MoARunError(MoAError, RuntimeError):
    """A run could not produce an answer (e.g. every proposer of a layer failed)."""
