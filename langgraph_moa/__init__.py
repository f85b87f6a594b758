"""langgraph-moa: Mixture-of-Agents as a LangGraph application.

Public API: :class:`Topology`, :func:`load_preset`, :func:`load_topology`, :func:`list_presets`,
:func:`build_graph`, and :class:`ChatMixtureOfAgents` (a topology as a LangChain chat model);
:func:`register_provider` and :func:`register_model` make any LangChain chat model usable in a
topology.

The names are imported on first use (PEP 562 ``__getattr__``), not when the package is: every
``langgraph_moa.*`` import runs this file first, and ``moa --help`` or the fake test server must
not pay for LangGraph, LangChain and the openai client they never use.
"""

import logging
from typing import TYPE_CHECKING

from langgraph_moa.errors import MissingCredentialsError, MoAError, MoAInputError, MoARunError
from langgraph_moa.faces import lazy_face

if TYPE_CHECKING:
    from langgraph_moa.chat_model import ChatMixtureOfAgents
    from langgraph_moa.graphs import MoAState, build_graph, build_state_graph
    from langgraph_moa.spec.agent import Agent
    from langgraph_moa.spec.providers import register_model, register_provider, unregister
    from langgraph_moa.spec.topology import (
        Layer,
        Topology,
        list_presets,
        load_preset,
        load_topology,
    )

# A library adds no log output of its own: the application (the `moa` command, or yours) decides.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Agent",
    "ChatMixtureOfAgents",
    "Layer",
    "MissingCredentialsError",
    "MoAError",
    "MoAInputError",
    "MoARunError",
    "MoAState",
    "Topology",
    "build_graph",
    "build_state_graph",
    "list_presets",
    "load_preset",
    "load_topology",
    "register_model",
    "register_provider",
    "unregister",
]

# public name -> the module that defines it
_HOME = {
    "ChatMixtureOfAgents": "langgraph_moa.chat_model",
    "MoAState": "langgraph_moa.graphs",
    "build_graph": "langgraph_moa.graphs",
    "build_state_graph": "langgraph_moa.graphs",
    "Agent": "langgraph_moa.spec.agent",
    **dict.fromkeys(
        ["Layer", "Topology", "list_presets", "load_preset", "load_topology"],
        "langgraph_moa.spec.topology",
    ),
    **dict.fromkeys(
        ["register_model", "register_provider", "unregister"], "langgraph_moa.spec.providers"
    ),
}


__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
