"""``moa serve``: Mixture-of-Agents topologies behind an OpenAI-compatible HTTP API, each preset
and topology file under its own model id; with a capture directory, also pass-through models
whose traffic is recorded for relabeling (passthrough.py, capture.py).

The modules, by job: catalog.py (what models are served, their compiled graphs), protocol.py
(the whole OpenAI wire format), routes.py (the routes, rendering the run loop's events),
guard.py (keys, body size and time, the access log), app.py (the app factory), server.py
(uvicorn, the socket, workers); beside them access.py, errors.py, passthrough.py, capture.py,
runs.py, transport.py and workers.py.

A program imports :func:`create_app` or :func:`run_server` from here; the modules' other names
are the package's own."""

from typing import TYPE_CHECKING

from langgraph_moa.faces import lazy_face

if TYPE_CHECKING:
    from langgraph_moa.serving.app import create_app
    from langgraph_moa.serving.server import run_server

# What a user imports: the ASGI app (to mount or test it) and the server ``moa serve`` runs.
__all__ = ["create_app", "run_server"]

# Loaded on first use (langgraph_moa/faces.py): importing one module of the package (the CLI
# does, before it checks its arguments) must not load the whole stack behind the face.
_HOME = {"create_app": "langgraph_moa.serving.app", "run_server": "langgraph_moa.serving.server"}

__getattr__, __dir__ = lazy_face(__name__, _HOME, __all__)
