"""How ``moa --help`` and each command's ``--help`` read: typer's rich help, with a few fixes.

Typer (0.29) shows a ``<bool>`` type for every flag (``--json``, ``--help``...), writes a
required argument as ``{prompt}`` in the usage line, and keeps a docstring's line breaks, so a
command's description breaks mid-sentence wherever its source line ended. :class:`MoATyper`
makes every command (and the root group) one that, when its help is drawn, shows no type for a
flag or a counter, writes arguments as ``PROMPT`` / ``[NAME]``, names a long choice list
``<CHOICE>`` (the option's help lists the values), shows a repeatable option's value type
(``<str>``, not ``<list[str]>``; its help says it repeats) and joins each paragraph of a
docstring into one line for rich to wrap at the terminal's width. Typer has no setting for
any of these, hence this module.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_LONGEST_CHOICES = 22  # wider choice lists crowd the type column at 80 columns


def _unwrap(text: str | None) -> str | None:
    """Each paragraph of ``text`` on one line (paragraphs stay apart)."""
    if text is None:
        return None
    paragraphs = text.strip().split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _tidy(command: Any, ctx: Any) -> None:
    command.help = _unwrap(command.help)
    for param in command.get_params(ctx):  # --help included
        if isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()  # as the usage line and docstrings write it
        elif isinstance(param, TyperOption) and param.metavar is None:
            if param.is_flag or param.count:
                param.metavar = ""  # a switch takes no value: show none
                continue
            shown = param.display_type(ctx)
            if shown.startswith("<list[") and param.multiple:  # repeatable: the help says so
                param.metavar = "<" + shown.removeprefix("<list[").removesuffix("]>") + ">"
            elif len(shown) > _LONGEST_CHOICES:
                param.metavar = "<CHOICE>"


def _usage(command: Any, ctx: Any) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = (param.metavar or param.name or "").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        else:
            pieces.extend(param.get_usage_pieces(ctx))
    return pieces


class MoACommand(TyperCommand):
    """A typer command whose help reads well (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _unwrap(self.help)  # the parent's command list shows it too
        for param in self.params:  # errors name an argument as the usage line writes it
            if isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy(self, ctx)
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return _usage(self, ctx)


class MoAGroup(TyperGroup):
    """The root ``moa`` group, with the same help fixes as its commands."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _tidy(self, ctx)
        super().format_help(ctx, formatter)


class MoATyper(typer.Typer):
    """A Typer app whose commands are :class:`MoACommand` unless told otherwise."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", MoACommand)
        return super().command(*args, **kwargs)
