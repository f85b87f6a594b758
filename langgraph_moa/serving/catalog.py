"""What ``moa serve`` serves: one model id per preset and per topology file of the topologies
folder (each refused at start-up if it would call back into this server or break a rule of
access.py), the pass-through models beside them (passthrough.py), and the compiled graph of each
model id, with a small LRU of graphs compiled for a request's ``seed``.

Also the check of the writer's options: the request fields the model that writes the final
answer cannot take (the embedded model has no top_p, penalties or response formats) are refused
here, once the model id says who that writer is."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from langgraph_moa.errors import MissingCredentialsError, MissingExtraError, MoAInputError
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.serving.access import SelfAddress, refusal_of
from langgraph_moa.serving.errors import APIError, http_wording
from langgraph_moa.serving.passthrough import PREFIX, PassThrough
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.providers import PROVIDERS
from langgraph_moa.spec.topology import Topology, list_presets, load_preset, load_topology

_TOPOLOGY_SUFFIXES = (".yaml", ".yml", ".json")
# Graphs compiled for a request's seed (see _with_seed), kept for the seeds used most recently.
SEEDED_GRAPHS = 32
# What the embedded model (an in-process aggregator) takes of the writer's options.
_IN_PROCESS_OPTIONS = frozenset({"temperature", "max_tokens", "stop"})


@dataclass
class Served:
    """One model id of the catalog: its topology, where it came from, and why it is refused
    (None if it is served)."""

    id: str
    topology: Topology
    source: str  # "preset" or the file's path
    refusal: str | None = None


def _topology_files(folder: Path, presets: dict[str, Served]) -> dict[str, Path]:
    """The topology files of ``folder`` by model id (the file's stem), checked: a folder that
    can be listed, no two files with one id, none shadowing a preset."""
    if not folder.is_dir():
        raise MoAInputError(f"the topologies folder {str(folder)!r} is not a directory")
    files: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        reason = e.strerror or str(e)
        raise MoAInputError(
            f"cannot list the topologies folder {str(folder)!r}: {reason}"
        ) from None
    for path in entries:
        if path.suffix.lower() not in _TOPOLOGY_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise MoAInputError(
                f"two topology files give the model id {path.stem!r}: "
                f"{files[path.stem].name} and {path.name}"
            )
        if path.stem in presets:
            raise MoAInputError(
                f"the topology file {str(path)!r} would shadow the preset {path.stem!r}: "
                "rename the file (a preset keeps its name)"
            )
        files[path.stem] = path
    return files


def load_catalog(topologies_dir: str | Path | None, here: SelfAddress) -> dict[str, Served]:
    """The presets and the topology files of ``topologies_dir`` by model id, each with the
    reason it is refused when served at ``here`` (access.py). Raises MoAInputError for a bad
    folder or file."""
    catalog = {name: Served(name, load_preset(name), "preset") for name in list_presets()}
    if topologies_dir is not None:
        for model_id, path in _topology_files(Path(topologies_dir), catalog).items():
            catalog[model_id] = Served(model_id, load_topology(path), str(path))
    for served in catalog.values():
        served.refusal = refusal_of(served.topology, here)
    return catalog


def not_ready(topology: Topology) -> str | None:
    """Why this server cannot run ``topology`` right now (a key not set, an extra not
    installed), in words for an HTTP client; None if it can. Keys are read at each call, so a
    key set later is seen."""
    try:
        check_ready(topology)
    except (MissingCredentialsError, MissingExtraError) as e:
        return http_wording(str(e))
    return None


def check_runnable(served: Served) -> None:
    """A 503 if this server cannot run ``served`` now (a key not set, an extra missing)."""
    try:
        check_ready(served.topology)
    except (MissingCredentialsError, MissingExtraError) as e:
        raise APIError(
            503,
            f"the model {served.id!r} cannot run on this server: {http_wording(str(e))}",
            type_="server_error",
            code="missing_api_key"
            if isinstance(e, MissingCredentialsError)
            else "model_unavailable",
            headers={"x-should-retry": "false"},
        ) from None


def _with_seed(value: Any, seed: int) -> Any:
    """``value`` (a topology, or any part of one) with every agent's seed set to ``seed``."""
    if isinstance(value, Agent):
        return value.model_copy(update={"seed": seed})
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _with_seed(old, seed)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [_with_seed(v, seed) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _writers(topology: Topology) -> list[Agent]:
    """The agents that may write the final answer: the aggregator, and a fallback model."""
    found: list[Agent] = [topology.aggregator]
    if isinstance(topology.fallback, Agent):
        found.append(topology.fallback)
    return found


def check_writer_options(served: Served, options: dict[str, Any]) -> None:
    """A 400 for a request field the answer's writer cannot take (the embedded model has no
    top_p, penalties or response formats): refused, not ignored."""
    for agent in _writers(served.topology):
        spec = PROVIDERS.get(agent.provider)
        if spec is None or spec.openai_compatible:
            continue
        for name in options:
            if name not in _IN_PROCESS_OPTIONS:
                raise APIError(
                    400,
                    f"unsupported parameter {name!r} for the model {served.id!r}: its answer "
                    f"is written by {agent.model}, which does not take it",
                    param=name,
                    code="unsupported_parameter",
                )


def _not_found(message: str) -> APIError:
    return APIError(404, message, param="model", code="model_not_found")


class Catalog:
    """The served models of one app: the topologies by model id, the pass-through models if
    the app captures, and the graphs compiled for them (once per model id; per seed, the most
    recent :data:`SEEDED_GRAPHS`)."""

    def __init__(
        self, served: dict[str, Served], *, cache: Any, passthrough: PassThrough | None = None
    ) -> None:
        self.served = served
        self.passthrough = passthrough
        self.cache = cache
        self.graphs: dict[str, Any] = {}
        self.seeded: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.created = int(time.time())

    def lookup(self, model_id: str) -> Served:
        """The served topology ``model_id`` names, or the 404 or 400 that says why not."""
        served = self.served.get(model_id)
        if served is None and model_id.startswith(PREFIX):
            raise _not_found(
                f"the model {model_id!r} does not exist: this server was started without a "
                "capture directory, so it serves no pass-through models"
            )
        if served is None:
            available = ", ".join(m for m, s in self.served.items() if s.refusal is None)
            raise _not_found(f"the model {model_id!r} does not exist; available: {available}")
        if served.refusal is not None:
            raise APIError(
                400,
                f"the model {model_id!r} is not served: {served.refusal}",
                param="model",
                code="model_refused",
            )
        return served

    async def graph_for(self, served: Served, seed: int | None = None) -> Any:
        """The compiled graph of ``served``; with a ``seed``, one whose every call takes it."""
        if seed is not None:
            # every call of the run takes the request's seed: the topology's agents with it
            key = (served.id, seed)
            graph = self.seeded.get(key)
            if graph is not None:
                self.seeded.move_to_end(key)
                return graph
            # compiling takes tens of ms: in a worker thread, so other requests go on
            topology = _with_seed(served.topology, seed)
            graph = await asyncio.to_thread(build_graph, topology, cache=self.cache)
            self.seeded[key] = graph
            while len(self.seeded) > SEEDED_GRAPHS:
                self.seeded.popitem(last=False)
            return graph
        graph = self.graphs.get(served.id)
        if graph is None:  # built once; a compiled graph holds no per-request state
            graph = self.graphs[served.id] = build_graph(served.topology, cache=self.cache)
        return graph

    # -- the /v1/models answers --------------------------------------------------------------
    def model_entry(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "langgraph-moa",
        }

    def models(self) -> dict[str, Any]:
        """The models that can run now in ``data``; the others in ``unavailable``, each with
        the reason (refused at start-up, or a key or extra missing now)."""
        data, unavailable = [], []
        for s in self.served.values():
            reason = s.refusal or not_ready(s.topology)
            if reason is None:
                data.append(self.model_entry(s.id))
            else:
                unavailable.append({"id": s.id, "reason": reason})
        if self.passthrough is not None:
            for alias in self.passthrough.listed():
                upstream = self.passthrough.resolve(alias)
                reason = self.passthrough.not_ready(upstream)
                if reason is None:
                    data.append(self.model_entry(alias))
                else:
                    unavailable.append({"id": alias, "reason": reason})
        return {"object": "list", "data": data, "unavailable": unavailable}

    def model(self, model_id: str) -> dict[str, Any]:
        if self.passthrough is not None and self.passthrough.handles(model_id):
            self.passthrough.resolve(model_id)  # 404 if it cannot name an upstream model
            return self.model_entry(model_id)
        return self.model_entry(self.lookup(model_id).id)
