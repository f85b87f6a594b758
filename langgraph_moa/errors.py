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


class MissingExtraError(MoAInputError):
    """A feature needs an optional dependency group (a pip extra) that is not installed; the
    message names the feature and the pip command that installs it."""


class LocalModelUnusableError(MoAInputError):
    """The embedded model's llama.cpp build cannot run on this machine (it crashed when checked);
    the message says what failed and how to rebuild it."""
