"""``python -m langgraph_moa.cli``: the ``moa`` command."""

from langgraph_moa.cli.app import main

main()
