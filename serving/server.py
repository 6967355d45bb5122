"""Runs the HTTP service with uvicorn on the engine built from featurelm.yaml."""

from __future__ import annotations

import uvicorn

from engine import Engine
from serving.app import create_app


def serve(*, config: str | None, host: str, port: int) -> int:
    engine = Engine.from_config(config)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=30)
    return 0
