"""pyllm's OpenAI-compatible HTTP server (`pyllm serve`); see docs/serving.md.

- protocol.py: request/response bodies (pydantic, OpenAI's field names)
- params.py: request fields -> SamplingParams, and the server's limits
- bridge.py: asyncio access to the engine's thread-safe front door
- app.py: the FastAPI routes; tasks.py: /v1/tasks/{name}
- errors.py: OpenAI-shaped errors, the body size limit
- metrics.py: Prometheus metrics; runner.py: uvicorn with a draining SIGTERM
"""

from __future__ import annotations

from pyllm.server.app import create_app
from pyllm.server.params import Limits

__all__ = ["Limits", "create_app"]
