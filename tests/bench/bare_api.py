"""A bare aiohttp app: the calibration point for the HTTP benchmark.

``POST /v1/tasks`` does the minimum a submission endpoint must: check the bearer key (a dict
lookup), parse the JSON body, answer ``202`` with a JSON id. No Redis, no middleware, no
tracing. ``bench --baseline`` runs it pinned and loaded exactly like the real API, so the
distance between the two is measured on the same machine at the same moment.

``python -m tests.bench.bare_api --port N`` reads ``API_KEYS`` (``tenant:key,...``).
"""

from __future__ import annotations

import argparse
import os
import secrets

import orjson
from aiohttp import web


def make_app(keys: dict[str, str]) -> web.Application:
    async def submit(request: web.Request) -> web.Response:
        tenant = keys.get(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if tenant is None:
            return web.Response(status=401)
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return web.Response(status=400)
        task_id = secrets.token_hex(16)
        return web.Response(
            status=202,
            body=orjson.dumps({"id": task_id, "status": "queued", "tenant": tenant}),
            content_type="application/json",
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/tasks", submit)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bare_api")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    pairs = (item.split(":", 1) for item in os.environ.get("API_KEYS", "").split(",") if item)
    keys = {key: tenant for tenant, key in pairs}
    web.run_app(make_app(keys), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
