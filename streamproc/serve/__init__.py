"""``streamproc serve``: the HTTP read API (FastAPI on uvicorn), read-only over Redis.

FastAPI because its routes are typed functions: request validation (clear 422s), the
OpenAPI description at ``/openapi.json`` and the interactive ``/docs`` come from the same
pydantic models the rest of streamproc uses, on asyncio like the Redis client; uvicorn is
its standard ASGI server.
"""

from __future__ import annotations

import logging

from streamproc.settings import Settings

log = logging.getLogger(__name__)


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn

    from streamproc.serve.app import create_app

    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve = settings.serve
    log.info("read API on http://%s:%s (%s)", serve.host, serve.port,
             "bearer token required" if serve.token else "no authentication")
    config = uvicorn.Config(
        create_app(settings), host=serve.host, port=serve.port,
        log_level=settings.log_level.lower(),
        # Request lines carry customer ids: logged only at DEBUG, like the worker's logs.
        access_log=settings.log_level == "DEBUG",
        server_header=False,
    )
    uvicorn.Server(config).run()


__all__ = ["run_server"]
