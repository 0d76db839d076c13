"""The metadata and unload hooks, ``def`` or ``async def``, in a real server: metadata is asked once after load (a
plain one on the model's pool) and its answer validates every request; the metadata endpoints ask again; unload
runs off the event loop. Response headers a hook sets come back over REST and as gRPC initial metadata."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from model_server.grpc_gen import inference_pb2 as pb
from model_server.grpc_gen import inference_pb2_grpc as pb_grpc
from tests.model_server import hook_models

CLASSES = "tests.model_server.hook_models"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name, cls in (("async-meta", "AsyncMetadata"), ("sync-meta", "SyncMetadata")):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text(f"model_class: {CLASSES}:{cls}\n")
    return root


def body(datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": [1, 2]}]}


@pytest.mark.parametrize("name", ["async-meta", "sync-meta"])
async def test_requests_are_validated_against_the_metadata_hooks_answer(http, name):
    async with http.post(f"/v2/models/{name}/infer", json=body()) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["outputs"][0]["data"] == [2, 4]
        assert r.headers["x-doubled-by"] == name
        assert "Bad Header Name" not in r.headers  # not an HTTP field name: left out, the answer still goes
    async with http.post(f"/v2/models/{name}/infer", json=body("INT32")) as r:
        assert r.status == 400
        assert "expects FP32" in (await r.json())["error"]


async def test_metadata_is_asked_once_at_load_and_again_by_the_endpoint(http):
    hook_models.AsyncMetadata.calls = 0
    hook_models.SyncMetadata.threads.clear()
    for _ in range(3):
        async with http.post("/v2/models/async-meta/infer", json=body()) as r:
            assert r.status == 200
    assert hook_models.AsyncMetadata.calls == 0  # requests use the answer taken at load
    async with http.get("/v2/models/async-meta") as r:
        doc = await r.json()
        assert (doc["platform"], doc["parameters"]) == ("async-meta", {"calls": 1})
    async with http.get("/v2/models/sync-meta") as r:
        assert (await r.json())["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert hook_models.SyncMetadata.threads == ["model-sync-meta_0"]  # the model's pool, not the loop


async def test_metadata_over_grpc_and_hook_headers_as_initial_metadata(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="async-meta"))
        assert (meta.platform, [t.name for t in meta.inputs]) == ("async-meta", ["x"])
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
        tensor.contents.fp32_contents.extend([1.5, 2.5])
        call = stub.ModelInfer(pb.ModelInferRequest(model_name="sync-meta", inputs=[tensor]))
        reply = await call
        assert list(reply.outputs[0].contents.fp32_contents) == [] and reply.raw_output_contents
        initial = dict(await call.initial_metadata())
        assert initial["x-doubled-by"] == "sync-meta"
        assert "bad header name" not in initial  # not a valid metadata key: left out, the call still succeeds


async def test_unload_runs_off_the_loop_both_ways(http):
    hook_models.UNLOADED.clear()
    for name in ("async-meta", "sync-meta"):
        async with http.post(f"/v2/repository/models/{name}/unload") as r:
            assert r.status == 200, await r.text()
    assert hook_models.UNLOADED["async-meta"] == "loop"  # async def: awaited on the loop
    sync_thread = hook_models.UNLOADED["sync-meta"]
    assert sync_thread != threading.main_thread().name  # def: on a worker thread, never the loop's


def test_hook_headers_keep_valid_fields_only():
    from model_server.rest import hook_headers

    headers = {
        "x-ok": "fine", "X-Count": 3, "Bad Name": "x", "x-split": "a\r\nSet-Cookie: evil", "x-nul": "a\0b",
        "Content-Length": "0", "transfer-encoding": "chunked", "x-text": "café",
    }
    assert hook_headers(headers) == {"x-ok": "fine", "X-Count": "3"}
