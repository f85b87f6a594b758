"""Node functions (prepare, propose, join, critique, aggregate) and the prompts they use.

No names here: the graph's steps are reached through :mod:`langgraph_moa.graphs`."""
