"""POST /v1/tasks/{name}: every registered task adapter (pyllm/tasks.py) over HTTP.

The body is one record with the fields of the task's JSONL records (its `input_fields`, e.g.
`{"text": "..."}`; an optional "id" is echoed back), or `{"records": [...]}` for a batch, plus an
optional "options" object with the task's keyword arguments (`{"labels": [...]}` for classify,
`{"src": "en", "tgt": "fr"}` for translate). The answer is the task's result per record, as a
JSONL job would write it. GET /v1/tasks lists the tasks and their fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request

from pyllm.errors import ContextLengthError
from pyllm.server.protocol import APIError

MAX_RECORDS = 64


def _adapter(name: str) -> Any:
    from pyllm import tasks

    try:
        return tasks.get(name)
    except KeyError as exc:
        raise APIError(
            404, str(exc).strip("'\""), type="not_found_error", param="name", code="task_not_found"
        ) from None


def _records(adapter: Any, body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    fields = tuple(getattr(adapter, "input_fields", ("text",)))
    single = "records" not in body
    if single:
        records = [{k: v for k, v in body.items() if k != "options"}]
    else:
        records = body["records"]
        if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
            raise APIError(
                400, f"records must be a list of 1..{MAX_RECORDS} objects", param="records"
            )
    for i, rec in enumerate(records):
        where = "body" if single else f"records[{i}]"
        if not isinstance(rec, dict):
            raise APIError(
                400, f"{where} must be an object with {', '.join(map(repr, fields))}", param=where
            )
        missing = [f for f in fields if not isinstance(rec.get(f), str)]
        if missing:
            raise APIError(
                400,
                f"{where}: task {adapter.name!r} needs a string {missing[0]!r} "
                f"(its fields: {', '.join(map(repr, fields))})",
                param=missing[0],
                code="invalid_record",
            )
    return records, single


def install_task_routes(app: FastAPI, state: Any, auth: list[Any]) -> None:
    @app.get("/v1/tasks", dependencies=auth)
    async def list_tasks() -> dict[str, Any]:
        from pyllm import tasks

        data = []
        for name in tasks.names():
            a = tasks.get(name)
            data.append(
                {
                    "name": name,
                    "description": getattr(a, "description", ""),
                    "input_fields": list(getattr(a, "input_fields", ("text",))),
                }
            )
        return {"object": "list", "data": data}

    @app.post("/v1/tasks/{name}", dependencies=auth)
    async def run_task(name: str, request: Request) -> dict[str, Any]:
        adapter = _adapter(name)
        try:
            body = await request.json()
        except ValueError as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        state.check_model(body.pop("model", None))
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise APIError(
                400, "options must be an object of the task's keyword arguments", param="options"
            )
        records, single = _records(adapter, body)

        def work() -> list[dict[str, Any]]:
            with state.llm.exclusive():
                return adapter.run(state.llm, records, **options)

        try:
            results = await asyncio.to_thread(work)
        except (ValueError, TypeError, ContextLengthError) as exc:
            raise APIError(400, f"task {name!r}: {exc}", code="invalid_request") from None
        out = [
            {**({"id": r["id"]} if "id" in r else {}), **res} for r, res in zip(records, results)
        ]
        return out[0] if single else {"object": "list", "data": out}
