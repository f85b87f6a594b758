"""langgraph-moa: Mixture-of-Agents as a LangGraph application.

Public API: :class:`Topology`, :func:`load_preset`, :func:`load_topology`, :func:`list_presets`,
:func:`build_graph`, and :class:`ChatMixtureOfAgents` (a topology as a LangChain chat model);
:func:`register_provider` and :func:`register_model` make any LangChain chat model usable in a
topology.
"""

import logging

from langgraph_moa.chat_model import ChatMixtureOfAgents
from langgraph_moa.errors import MissingCredentialsError, MoAError, MoAInputError, MoARunError
from langgraph_moa.graphs import MoAState, build_graph, build_state_graph
from langgraph_moa.spec.providers import register_model, register_provider, unregister
from langgraph_moa.spec.topology import (
    Agent,
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
