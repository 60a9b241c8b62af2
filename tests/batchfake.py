"""A small stand-in for the mock's Batch API (issue 12 §5), on real loopback HTTP.

Used until ``pmock_batch/mock`` serves ``/v1/files`` and ``/v1/batches``.
Each poll of ``GET /batches/{id}`` moves a batch one step: validating,
in_progress, then its end (``completed``; or ``expired`` with
``expire_fraction`` of its rows done). ``fail`` names custom_ids that end in
the error file with a 400. It counts what it received.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from typing import Any

from aiohttp import web
from PIL import Image


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


class FakeBatchAPI:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.rows_by_batch: dict[str, list[str]] = {}
        self.ids = itertools.count(1)
        self.expire_fraction: float | None = None  # the next batch expires with this done
        self.fail: set[str] = set()
        self.deleted: list[str] = []
        self.steps = 2  # polls before a batch ends
        self.app = web.Application()
        r = self.app.router
        r.add_post("/v1/files", self.upload)
        r.add_get("/v1/files", self.list_files)
        r.add_get("/v1/files/{id}/content", self.content)
        r.add_delete("/v1/files/{id}", self.delete)
        r.add_post("/v1/batches", self.create)
        r.add_get("/v1/batches", self.list_batches)
        r.add_get("/v1/batches/{id}", self.retrieve)
        r.add_post("/v1/batches/{id}/cancel", self.cancel)

    def _file(self, name: str, data: bytes) -> dict[str, Any]:
        fid = f"file-{next(self.ids)}"
        obj = {
            "id": fid,
            "object": "file",
            "filename": name,
            "purpose": "batch",
            "bytes": len(data),
            "created_at": int(time.time()),
        }
        self.files[fid] = {**obj, "data": data}
        return obj

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form["file"]
        assert form["purpose"] == "batch" and isinstance(f, web.FileField)
        assert f.filename.endswith(".jsonl")
        return web.json_response(self._file(f.filename, f.file.read()))

    async def list_files(self, request: web.Request) -> web.Response:
        data = [{k: v for k, v in f.items() if k != "data"} for f in self.files.values()]
        return web.json_response({"object": "list", "data": data})

    async def content(self, request: web.Request) -> web.StreamResponse:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        resp = web.StreamResponse()
        await resp.prepare(request)
        data = f["data"]
        for i in range(0, len(data), 7000):  # small pieces: lines cross chunk boundaries
            await resp.write(data[i : i + 7000])
        await resp.write_eof()
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if self.files.pop(fid, None) is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        self.deleted.append(fid)
        return web.json_response({"id": fid, "deleted": True})

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        fid = body["input_file_id"]
        lines = [json.loads(x) for x in self.files[fid]["data"].splitlines()]
        assert len({x["body"]["model"] for x in lines}) == 1
        bid = f"batch_{next(self.ids)}"
        self.rows_by_batch[bid] = [x["custom_id"] for x in lines]
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": fid,
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": body["metadata"],
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_polls": 0,
            "_expire": self.expire_fraction,
        }
        self.expire_fraction = None
        return web.json_response(self._public(bid))

    def _public(self, bid: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    async def list_batches(self, request: web.Request) -> web.Response:
        data = [self._public(b) for b in reversed(self.batches)]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        if bid not in self.batches:  # as the real API answers an unknown id
            error = {"message": f"No batch found with id '{bid}'.", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=404)
        b = self.batches[bid]
        b["_polls"] += 1
        if b["status"] == "validating":
            b["status"] = "in_progress"
        elif b["status"] == "in_progress" and b["_polls"] >= self.steps:
            self._finish(bid, "expired" if b["_expire"] is not None else "completed")
        elif b["status"] == "cancelling":
            self._finish(bid, "cancelled")
        return web.json_response(self._public(bid))

    async def cancel(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        self.batches[bid]["status"] = "cancelling"
        return web.json_response(self._public(bid))

    def _finish(self, bid: str, status: str) -> None:
        b = self.batches[bid]
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["data"].splitlines()]
        done = len(lines) if status == "completed" else int(len(lines) * (b["_expire"] or 0))
        out, err = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            rid = f"req_{bid}_{i}"
            if i >= done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                err.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": code, "message": "not run"},
                    }
                )
            elif cid in self.fail:
                body = {
                    "error": {
                        "message": "bad prompt",
                        "type": "invalid_request_error",
                        "code": "invalid_value",
                    }
                }
                err.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "error": None,
                        "response": {"status_code": 400, "request_id": rid, "body": body},
                    }
                )
            else:
                body = {
                    "created": 1,
                    "usage": {"total_tokens": 10},
                    "data": [{"b64_json": base64.b64encode(png(i)).decode()}],
                }
                out.append(
                    {
                        "id": rid,
                        "custom_id": cid,
                        "error": None,
                        "response": {"status_code": 200, "request_id": rid, "body": body},
                    }
                )

        def text(rows: list[dict[str, Any]]) -> bytes:
            return "".join(json.dumps(r) + "\n" for r in rows).encode()

        b["output_file_id"] = self._file("out.jsonl", text(out))["id"] if out else None
        b["error_file_id"] = self._file("err.jsonl", text(err))["id"] if err else None
        failed = sum(1 for e in err if e["response"] is not None)
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": failed}
        b["status"] = status
