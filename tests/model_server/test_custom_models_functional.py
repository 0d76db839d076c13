"""Python model classes served for real: named by config.yaml or --model-class, over V1, V2 REST and gRPC; sync
hooks on the model's thread pool (never the loop), headers both ways, errors mapped through the one error type."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

from model_server.grpc_gen import inference_pb2 as pb
from model_server.grpc_gen import inference_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, free_port
from tests.model_server import custom_models

CLASSES = "tests.model_server.custom_models"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name, cls in (("reverse", "Reverse"), ("blocking", "Blocking"), ("greeter", "Greeter"), ("shout", "Shout"),
                      ("async-shout", "AsyncShout")):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text(f"model_class: {CLASSES}:{cls}\n")
    (root / "greeter" / "greeting.txt").write_text("hello\n")  # no version folders: the folder is version 1
    return root




def v2_text(*texts: str) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}]}


async def test_sync_hooks_run_on_the_model_pool_and_see_request_headers(http):
    async with http.post("/v2/models/reverse/infer", json=v2_text("abc", "xy"), headers={"x-request-id": "r-1"}) as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["outputs"] == [{"name": "reversed", "datatype": "BYTES", "shape": [2], "data": ["cba", "yx"]}]
        assert r.headers["x-model-thread"].startswith("model-reverse")  # not the event loop's thread
        assert r.headers["x-postprocess-thread"].startswith("model-reverse")
        assert r.headers["x-seen-request-id"] == "r-1"
        assert "predict;dur=" in r.headers["Server-Timing"]


async def test_sync_pre_and_postprocess_run_on_the_model_pool_and_see_request_headers(http):
    async with http.post("/v1/models/shout:predict", json={"instances": ["hey"]}, headers={"x-tenant": "t-9"}) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"predictions": ["HEY"]}  # preprocess's answer reached predict
        for hook in ("preprocess", "postprocess"):
            assert r.headers[f"x-{hook}-thread"].startswith("model-shout"), hook
            assert r.headers[f"x-{hook}-tenant"] == "t-9", hook


@pytest.mark.parametrize("name, pool", [("shout", True), ("async-shout", False)])
async def test_a_user_explain_hook_answers_explain(http, name: str, pool: bool):
    async with http.post(f"/v1/models/{name}:explain", json={"instances": ["abc", "de"]},
                         headers={"x-tenant": "t-3"}) as r:
        body = await r.json()
        assert r.status == 200, body
    assert (body["explanations"], body["tenant"]) == (["3 letters", "2 letters"], "t-3")
    assert body["thread"].startswith(f"model-{name}") is pool  # def: the model's pool; async def: the event loop


async def test_the_same_class_serves_v1(http):
    async with http.post("/v1/models/reverse:predict", json={"instances": ["stressed"]}) as r:
        assert r.status == 200
        assert await r.json() == {"predictions": ["desserts"]}


async def test_user_errors_map_to_statuses_over_rest(http, caplog):
    async with http.post("/v2/models/reverse/infer", json=v2_text("")) as r:
        assert (r.status, await r.json()) == (400, {"error": "text must not be empty"})
    async with http.post("/v2/models/reverse/infer", json=v2_text("boom")) as r:
        assert (r.status, await r.json()) == (500, {"error": "Internal server error"})
    assert "secret detail" in caplog.text  # logged for the operator only
    bad = {"inputs": [{"name": "text", "shape": [1], "datatype": "INT32", "data": [1]}]}
    async with http.post("/v2/models/reverse/infer", json=bad) as r:  # declared inputs are checked before predict
        assert r.status == 400
        assert "expects BYTES" in (await r.json())["error"]


async def test_the_same_class_over_grpc_with_errors_mapped(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def message(text: bytes) -> pb.ModelInferRequest:
            tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(text)
            return pb.ModelInferRequest(model_name="reverse", inputs=[tensor])

        reply = await stub.ModelInfer(message(b"grpc"), metadata=(("x-request-id", "g-1"),))
        assert reply.outputs[0].name == "reversed"
        assert reply.raw_output_contents[0] == b"\x04\x00\x00\x00cprg"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(message(b""))
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 "text must not be empty")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(message(b"boom"))
        assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INTERNAL, "Internal server error")


async def test_a_blocking_sync_predict_leaves_the_event_loop_free(http):
    custom_models.ENTERED.clear()
    custom_models.RELEASE.clear()
    call = asyncio.ensure_future(http.post("/v1/models/blocking:predict", json={"instances": [1]}))
    try:
        assert await asyncio.to_thread(custom_models.ENTERED.wait, 10)  # the model is now blocked in predict
        assert not call.done()
        started = time.perf_counter()
        async with http.get("/v2/health/live") as live:
            assert live.status == 200
        assert time.perf_counter() - started < 0.5
    finally:
        custom_models.RELEASE.set()
    response = await call
    assert await response.json() == {"predictions": ["released"]}
    response.release()


async def test_async_load_reads_the_model_folder(http):
    async with http.post("/v1/models/greeter:predict", json={"instances": ["ada"]}) as r:
        assert await r.json() == {"predictions": ["hello, ada"], "version": "1"}


async def test_classes_that_cannot_load_stay_unavailable_with_the_reason(start_model_server, tmp_path: Path):
    root = tmp_path / "models"
    for name, cls in (("lazy", f"{CLASSES}:NeverReady"), ("missing", f"{CLASSES}:NoSuchClass"),
                      ("notamodel", "collections:OrderedDict")):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text(f"model_class: {cls}\n")
    server = await start_model_server(root)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.get("/v2/health/ready") as r:
            assert r.status == 503
        async with http.post("/v2/repository/index", json={}) as r:
            reasons = {row["name"]: row["reason"] for row in await r.json()}
    assert "NeverReady.load() returned, but the model is not ready" in reasons["lazy"]
    assert "has no attribute 'NoSuchClass'" in reasons["missing"]
    assert "is not a subclass of model_server.model.Model" in reasons["notamodel"]


async def test_model_class_flag_serves_a_class_as_a_real_process():
    port = free_port()
    proc = ServiceProcess("servelane", "model-server", "--model-class", f"{CLASSES}:Reverse",
                          "--http-port", str(port), "--grpc-port", "-1").start()
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/v2/health/ready")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.post("/v2/models/model/infer", json=v2_text("flag")) as r:  # the default name: model
                assert (await r.json())["outputs"][0]["data"] == ["galf"]
    finally:
        assert proc.stop() == 0


async def test_model_class_with_model_path_loads_from_that_folder_as_a_real_process(tmp_path: Path):
    (tmp_path / "greeting.txt").write_text("ahoy\n")
    port = free_port()
    proc = ServiceProcess("servelane", "model-server", "--model-class", f"{CLASSES}:Greeter",
                          "--model-path", str(tmp_path), "--http-port", str(port), "--grpc-port", "-1").start()
    try:
        await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/v2/health/ready")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.post("/v1/models/model:predict", json={"instances": ["ada"]}) as r:
                assert (r.status, await r.json()) == (200, {"predictions": ["ahoy, ada"], "version": "1"})
    finally:
        assert proc.stop() == 0


def test_tensor_from_array_infers_datatypes():
    from model_server.types import Tensor

    assert Tensor.from_array("a", np.zeros((2, 3), np.float32)).datatype == "FP32"
    text = Tensor.from_array("s", np.array(["a", "bc"]))
    assert (text.datatype, text.data.dtype, text.shape) == ("BYTES", np.dtype(object), (2,))
