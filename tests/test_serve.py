"""The real server on a free loopback port, over HTTP: every endpoint, bad input, concurrency, export parity."""

import asyncio
import base64
import concurrent.futures
import csv
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server, free_port, kserve_body, png_bytes, run_cli
from fmnist.engine import MicroBatcher, load_engine
from fmnist.serve import ServeConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(served_run):
    server = Server(served_run, "--engine", "keras")
    yield server
    server.close()


def test_health_and_metadata(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    metadata = httpx.get(f"{server.url}/v2/models/shop").json()
    assert metadata["name"] == "shop"
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert httpx.get(f"{server.url}/v2/models/shop/ready").json()["ready"] is True
    status = httpx.get(f"{server.url}/v1/models/shop").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    # Every model route also answers with the version in the path, as clients of either protocol may ask.
    for path in ("/v2/models/shop", "/v2/models/shop/ready", "/v1/models/shop", "/v1/models/shop/metadata"):
        versioned = path.replace("/shop", "/shop/versions/1", 1)
        assert httpx.get(f"{server.url}{versioned}").json() == httpx.get(f"{server.url}{path}").json(), versioned
        missing = httpx.get(f"{server.url}{path.replace('/shop', '/shop/versions/2', 1)}")
        assert missing.status_code == 404 and "has no version '2'" in missing.json()["error"]
    assert "version" not in str(httpx.get(f"{server.url}/openapi.json").json()["paths"]["/v2/models/{name}"])
    assert "openapi" in httpx.get(f"{server.url}/openapi.json").json()
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_protocols_agree_with_each_other_and_with_predict(server, served_run, dataset, tmp_path):
    images = dataset.x_test[:8]
    kserve = httpx.post(f"{server.url}/v2/models/shop/infer", json={**kserve_body(images), "id": "r1"}).json()
    assert kserve["id"] == "r1" and kserve["outputs"][0]["shape"] == [8, 10]
    from_kserve = np.array(kserve["outputs"][0]["data"]).reshape(8, 10)
    tf_arrays = httpx.post(f"{server.url}/v1/models/shop:predict", json={"instances": images.tolist()}).json()
    b64 = [{"b64": base64.b64encode(png_bytes(image)).decode()} for image in images]
    tf_images = httpx.post(f"{server.url}/v1/models/shop:predict", json={"instances": b64}).json()
    np.testing.assert_allclose(np.array(tf_arrays["predictions"]), from_kserve, atol=1e-6)
    np.testing.assert_allclose(np.array(tf_images["predictions"]), from_kserve, atol=1e-6)
    for columns in ({"inputs": images.tolist()}, {"inputs": {"images": b64}, "signature_name": "serving_default"}):
        tf_columns = httpx.post(f"{server.url}/v1/models/shop:predict", json=columns).json()  # TF Serving's columnar format
        assert list(tf_columns) == ["outputs"]
        np.testing.assert_allclose(np.array(tf_columns["outputs"]), from_kserve, atol=1e-6)
    np.testing.assert_allclose(from_kserve.sum(axis=1), 1.0, atol=1e-5)
    versioned = httpx.post(f"{server.url}/v2/models/shop/versions/1/infer", json=kserve_body(images)).json()
    np.testing.assert_allclose(np.array(versioned["outputs"][0]["data"]).reshape(8, 10), from_kserve, atol=1e-6)
    versioned = httpx.post(f"{server.url}/v1/models/shop/versions/1:predict", json={"instances": images.tolist()}).json()
    np.testing.assert_allclose(np.array(versioned["predictions"]), from_kserve, atol=1e-6)
    files = [("files", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(images)]
    upload = httpx.post(f"{server.url}/predict", files=files).json()
    assert [entry["class_index"] for entry in upload["predictions"]] == list(from_kserve.argmax(axis=1))
    seen = Image.open(io.BytesIO(base64.b64decode(upload["predictions"][0]["input_png"].split(",")[1])))
    np.testing.assert_array_equal(np.asarray(seen), images[0])
    negated = httpx.post(f"{server.url}/predict", files=files[:1], data={"background": "light"}).json()["predictions"][0]
    seen = Image.open(io.BytesIO(base64.b64decode(negated["input_png"].split(",")[1])))
    np.testing.assert_array_equal(np.asarray(seen), 255 - images[0])  # the form's background, over the border's
    np.save(tmp_path / "x.npy", images)
    cli = json.loads(run_cli("predict", str(served_run), str(tmp_path / "x.npy"), "--json").stdout)
    assert [entry["class_index"] for entry in cli] == list(from_kserve.argmax(axis=1))


def bomb_png() -> bytes:
    """A 10,000 x 10,000 grayscale PNG of zeros: about 100 KB on the wire, 100 megapixels decoded."""
    width = height = 10_000
    raw = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


BAD_JSON_REQUESTS = [
    ("/v2/models/shop/infer", b"{not json", 400, "malformed JSON"),
    ("/v2/models/shop/infer", b"[1, 2]", 400, "must be an object"),
    ("/v2/models/shop/infer", json.dumps({"inputs": []}).encode(), 400, "one tensor"),
    ("/v2/models/shop/infer", json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 27], "datatype": "UINT8",
                                                      "data": [0] * 756}]}).encode(), 400, "expected [n, 28, 28]"),  # fmt: skip
    ("/v2/models/shop/infer", json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32",
                                                      "data": [0.0] * 784}]}).encode(), 400, "the input is UINT8"),  # fmt: skip
    ("/v2/models/shop/infer", json.dumps({"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                                                      "data": [300] * 784}]}).encode(), 400, "from 0 to 255"),  # fmt: skip
    ("/v2/models/shop/infer", json.dumps({"inputs": [{"name": "images", "shape": [2, 28, 28], "datatype": "UINT8",
                                                      "data": [0] * 784}]}).encode(), 400, "needs 1568"),  # fmt: skip
    ("/v2/models/shop/infer", json.dumps({"inputs": [{"name": "images", "shape": [2000, 28, 28], "datatype": "UINT8",
                                                      "data": [0]}]}).encode(), 413, "the limit is 1024"),  # fmt: skip
    ("/v1/models/shop:predict", b'{"instances": [[[NaN]]]}', 400, "shape (1, 1)"),
    ("/v1/models/shop:predict", json.dumps({"instances": [[[float("nan")] * 28] * 28]}).encode(), 400, "NaN"),
    ("/v1/models/shop:predict", json.dumps({"instances": [[["a"] * 28] * 28]}).encode(), 400, "must be numbers"),
    ("/v1/models/shop:predict", json.dumps({"instances": [[[0] * 28] * 27 + [[0] * 5]]}).encode(), 400, "rectangular"),
    ("/v1/models/shop:predict", json.dumps({"instances": [{"b64": "***"}]}).encode(), 400, "invalid base64"),
    ("/v1/models/shop:predict", json.dumps({"instances": [{"b64": base64.b64encode(b"text").decode()}]}).encode(),
     400, "not an image format"),  # fmt: skip
    ("/v1/models/shop:predict", json.dumps({"rows": []}).encode(), 400, 'one of "instances" (rows) and "inputs"'),
    ("/v1/models/shop:predict", json.dumps({"instances": [], "inputs": []}).encode(), 400, 'one of "instances"'),
    ("/v1/models/shop:predict", json.dumps({"inputs": {"pixels": []}}).encode(), 400, "one input, 'images'"),
    ("/v1/models/shop:predict", json.dumps({"inputs": [], "signature_name": "other"}).encode(), 400,
     "unknown signature_name 'other'"),  # fmt: skip
    ("/v1/models/shop:predict", json.dumps({"inputs": "pixels"}).encode(), 400, "must be a list"),
    ("/v1/models/shop:classify", json.dumps({"instances": []}).encode(), 404, "answers :predict"),
    ("/v1/models/other:predict", json.dumps({"instances": []}).encode(), 404, "unknown model 'other'"),
    ("/v2/models/other/infer", b"{}", 404, "unknown model"),
    ("/v2/models/shop/versions/2/infer", b"{}", 404, "has no version '2'"),
    ("/v1/models/shop/versions/2:predict", json.dumps({"instances": []}).encode(), 404, "has no version '2'"),
    ("/v1/models/other/versions/1:predict", json.dumps({"instances": []}).encode(), 404, "unknown model 'other'"),
    ("/v1/models/shop/versions/1:classify", json.dumps({"instances": []}).encode(), 404, "answers :predict"),
    ("/v1/models/shop/labels/stable:predict", json.dumps({"instances": []}).encode(), 404,
     "has no version label 'stable'; its labels: none (fmnist serve --model-label names one)"),  # fmt: skip
]


@pytest.mark.parametrize("path, body, status, message", BAD_JSON_REQUESTS)
def test_bad_json_requests_get_a_clear_4xx(server, path, body, status, message):
    response = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("setting", [{"max_batch": 0}, {"max_request_images": -1}, {"max_body_bytes": 0},
                                     {"max_delay_ms": float("nan")}])  # fmt: skip
def test_a_server_config_that_could_not_serve_is_refused(setting):
    with pytest.raises(ValueError, match=f"{next(iter(setting))} must be"):
        ServeConfig(run_dir="runs/any", **setting)


@pytest.mark.parametrize("setting, message", [
    ({"model_version": 0}, "model_version must be at least 1"),
    ({"model_name": "a:b"}, "model name 'a:b': use letters, digits"),
    ({"model_name": ""}, "model name '': use letters"),
    ({"model_labels": ("stable", "new/er")}, "version label 'new/er': use letters"),
    ({"model_labels": ("2",)}, "a label is a name, not a number"),
])  # fmt: skip
def test_a_name_version_or_label_that_would_not_fit_a_path_is_refused(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServeConfig(run_dir="runs/any", **setting)


def test_a_run_served_under_another_name_version_and_labels(served_run, server, dataset):
    """As TF Serving's --model_name and a version labelled in its config: every path that names them answers alike."""
    images = dataset.x_test[:3]
    expected = httpx.post(f"{server.url}/v1/models/shop:predict", json={"instances": images.tolist()}).json()
    named = Server(served_run, "--engine", "keras", "--model-name", "fmnist", "--model-version", "3",
                   "--model-label", "stable", "--model-label", "canary")  # fmt: skip
    try:
        url = f"{named.url}/v1/models/fmnist"
        status = httpx.get(url).json()
        assert status["model_version_status"][0]["version"] == "3"
        for path in ("/versions/3", "/labels/stable", "/labels/canary"):
            assert httpx.get(url + path).json() == status, path
            assert httpx.get(f"{url}{path}/metadata").json() == httpx.get(f"{url}/metadata").json(), path
            answer = httpx.post(f"{url}{path}:predict", json={"instances": images.tolist()}).json()
            np.testing.assert_allclose(answer["predictions"], expected["predictions"], atol=1e-6)
        assert httpx.get(f"{url}/metadata").json()["model_spec"] == {"name": "fmnist", "signature_name": "", "version": "3"}
        for path, message in [("/versions/1", "has no version '1'; this server serves version 3"),
                              ("/labels/beta", "has no version label 'beta'; its labels: 'stable', 'canary'")]:  # fmt: skip
            missing = httpx.get(url + path)
            assert missing.status_code == 404 and message in missing.json()["error"], path
        kserve = httpx.post(f"{named.url}/v2/models/fmnist/versions/3/infer", json=kserve_body(images)).json()
        assert kserve["model_name"] == "fmnist" and kserve["model_version"] == "3"
        assert httpx.get(f"{named.url}/v2/models/fmnist").json()["versions"] == ["3"]
        assert httpx.get(f"{named.url}/v2/models/shop").status_code == 404  # the run's own name is not served
        info = httpx.get(f"{named.url}/info").json()
        assert (info["model"], info["version"], info["labels"]) == ("fmnist", 3, ["stable", "canary"])
    finally:
        named.close()


def test_bad_uploads_get_a_clear_4xx(server, dataset):
    good = png_bytes(dataset.x_test[0])
    cases = [
        ([("files", ("a.txt", b"hello", "text/plain"))], 400, "not an image format"),
        ([("files", ("cut.png", good[: len(good) // 2], "image/png"))], 400, "truncated or corrupt"),
        ([("files", ("bomb.png", bomb_png(), "image/png"))], 400, "decompression bomb"),
    ]
    for files, status, message in cases:
        response = httpx.post(f"{server.url}/predict", files=files, timeout=30)
        assert response.status_code == status and message in response.json()["error"], response.text
    # a bad file among good ones gets its own error, and the others their predictions, as `fmnist predict` does
    mixed = [("files", ("0.png", good, "image/png")), ("files", ("a.txt", b"hello", "text/plain")),
             ("files", ("1.png", png_bytes(dataset.x_test[1]), "image/png"))]  # fmt: skip
    answer = httpx.post(f"{server.url}/predict", files=mixed, timeout=30)
    alone = [httpx.post(f"{server.url}/predict", files=[file]).json()["predictions"][0] for file in (mixed[0], mixed[2])]
    assert answer.status_code == 200, answer.text
    first, bad, second = answer.json()["predictions"]
    assert list(bad) == ["filename", "error"] and bad["error"].startswith("a.txt: not an image format Pillow can read")
    assert [first["filename"], second["filename"]] == ["0.png", "1.png"]
    for together, apart in zip([first, second], alone, strict=True):  # a batch of 2 may round differently from 1
        assert together["class_index"] == apart["class_index"] and together["input_png"] == apart["input_png"]
        assert together["top"][0]["probability"] == pytest.approx(apart["top"][0]["probability"], abs=1e-6)
    all_bad = httpx.post(f"{server.url}/predict", files=[mixed[1], ("files", ("e.png", b"", "image/png"))])
    assert all_bad.status_code == 400 and all_bad.json()["error"].startswith("a.txt: not an image format")
    assert "e.png: the file is empty" in all_bad.json()["error"]
    response = httpx.post(f"{server.url}/predict", files=mixed[:1], data={"background": "white"})
    assert response.status_code == 400 and "background 'white': choose auto" in response.json()["error"]
    response = httpx.post(f"{server.url}/predict", data={"nothing": "here"})
    assert response.status_code == 422 and "one field named `files` per image" in response.json()["error"]
    huge = bytes(11 * 1024 * 1024)
    response = httpx.post(f"{server.url}/predict", files=[("files", ("big.png", huge, "image/png"))])
    assert response.status_code == 413 and "limit" in response.json()["error"]
    for path, content_type, body in [("/predict", "multipart/form-data; boundary=cut", multipart_file(huge, "cut")),
                                     ("/v2/models/shop/infer", "application/json", [b"[", b"0," * 6_000_000, b"0]"])]:
        chunked = httpx.post(f"{server.url}{path}", content=iter(body), headers={"content-type": content_type})  # no length
        assert chunked.status_code == 413 and "body over the limit of 10,485,760 bytes" in chunked.json()["error"], path
    assert httpx.get(f"{server.url}/no/such/page").json() == {"error": "Not Found"}
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200  # still up


def multipart_file(content: bytes, boundary: str) -> list[bytes]:
    """A multipart/form-data body with one file in the field "files", in pieces (sent chunked, without a length)."""
    head = f'--{boundary}\r\ncontent-disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    pieces = [content[start : start + 1024 * 1024] for start in range(0, len(content), 1024 * 1024)]
    return [head.encode(), *pieces, f"\r\n--{boundary}--\r\n".encode()]


def test_a_port_in_use_or_an_unknown_host_stops_before_the_server_is_announced(served_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(served_run), "--port", str(port), check=False, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "choose another --port" in result.stderr
    assert "serving" not in result.stdout  # no address announced that answers nothing
    result = run_cli("serve", str(served_run), "--host", "no-such-host.invalid", check=False, timeout=60)
    assert result.returncode == 1 and "--host no-such-host.invalid: not an address" in result.stderr, result.stderr


def test_two_server_processes_answer_as_one_does_and_are_counted_together(served_run, server, dataset, tmp_path):
    """`--workers 2`: uvicorn's processes share the port; the config reaches each, and /metrics counts all requests.

    The address is printed once both have loaded the model, so the link printed answers at once.

    Their counts meet in a folder of their own, which the server removes when it stops, with its other one.
    """
    body = kserve_body(dataset.x_test[:4])
    expected = httpx.post(f"{server.url}/v2/models/shop/infer", json=body).json()["outputs"][0]["data"]
    workers = Server(served_run, "--engine", "keras", "--workers", "2", "--max-body-mb", "1", "--model-label", "stable",
                     env={"TMPDIR": str(tmp_path)})  # fmt: skip
    try:
        # the address came once both workers had loaded the model, so the first request was answered at once
        assert workers.startup_lines[0].startswith("starting 2 server processes") and workers.answered_at_once
        # the metrics' folder, and one where a worker that could not start would say why
        assert sorted(path.name.rsplit("-", 1)[0] for path in tmp_path.iterdir()) == ["fmnist-prometheus", "fmnist-serve"]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # new connections, taken by either process
            answers = list(pool.map(lambda _: httpx.post(f"{workers.url}/v2/models/shop/infer", json=body), range(16)))
        for answer in answers:
            np.testing.assert_allclose(answer.json()["outputs"][0]["data"], expected, atol=1e-6)
        too_big = httpx.post(f"{workers.url}/v2/models/shop/infer", content=bytes(2 * 1024 * 1024))
        assert too_big.status_code == 413 and "the limit is 1,048,576" in too_big.json()["error"]  # the option got there
        metrics = httpx.get(f"{workers.url}/metrics").text
        assert 'fmnist_requests_total{route="/v2/models/{name}/infer",status="200"} 16.0' in metrics
        assert "fmnist_batch_size_sum 64.0" in metrics  # 16 requests of 4 images, however they were batched
        assert httpx.get(f"{workers.url}/v1/models/shop/labels/stable").status_code == 200  # a list option got there too
    finally:
        workers.close()
    assert workers.process.returncode == 0 and list(tmp_path.iterdir()) == []  # stopped cleanly, the folder gone


def test_no_model_call_holds_more_than_max_batch_images(served_run, dataset):
    engine, images, calls = load_engine(served_run, "keras"), dataset.x_test[:25], []

    async def clients():  # five requests of 3 images and one of 10, at once
        batcher = MicroBatcher(engine, max_batch=4, max_delay=0.05, on_batch=calls.append)
        requests = [images[start : start + 3] for start in range(0, 15, 3)] + [images[15:]]
        answers = await asyncio.gather(*(batcher.submit(request) for request in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(clients())
    assert max(calls) <= 4 and sum(calls) == 25, calls
    np.testing.assert_allclose(np.concatenate(answers), engine.probabilities(images), atol=1e-6)


def test_concurrent_clients_get_their_own_answers(server, dataset):
    images = dataset.x_test[:64]
    answer = httpx.post(f"{server.url}/v1/models/shop:predict", json={"instances": images.tolist()})
    expected = np.array(answer.json()["predictions"])

    def client(offset: int):
        with httpx.Client() as session:
            answers = []
            for step in range(16):
                index = (offset * 16 + step) % 64
                body = kserve_body(images[index : index + 1])
                data = session.post(f"{server.url}/v2/models/shop/infer", json=body).json()["outputs"][0]["data"]
                answers.append((index, np.array(data)))
            return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for answers in pool.map(client, range(8)):
            for index, probabilities in answers:
                np.testing.assert_allclose(probabilities, expected[index], atol=1e-6)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'fmnist_requests_total{route="/v2/models/{name}/infer",status="200"}' in metrics
    assert "fmnist_batch_size_bucket" in metrics and "fmnist_request_errors_total" in metrics
    batches = [line for line in metrics.splitlines() if line.startswith("fmnist_batch_size_count")]
    requests = [line for line in metrics.splitlines() if line.startswith("fmnist_batch_size_sum")]
    assert float(batches[0].split()[-1]) <= float(requests[0].split()[-1])  # batches hold one or more images


@pytest.mark.parametrize("export_format", ["onnx", "saved_model"])
def test_export_passes_parity(served_run, server, real_data_dir, export_format):
    run_dir = served_run
    output = run_cli("export", str(run_dir), "--format", export_format, "--data-dir", str(real_data_dir)).stdout
    assert "passed" in output
    parity = json.loads((run_dir / "export" / f"{export_format}_parity.json").read_text())
    assert parity["max_abs_difference"] <= 1e-5 and parity["argmax_agreement"] == 1.0 and parity["num_images"] == 1000
    if export_format == "saved_model":
        import tensorflow as tf
        from tensorflow.core.framework import types_pb2
        from tensorflow.python.tools import saved_model_utils  # what saved_model_cli reads the signatures with

        # TF Serving's layout: the model base path holds numbered version directories, and nothing else it would scan
        assert [path.name for path in (run_dir / "export" / "saved_model").iterdir()] == ["1"]
        signature = tf.saved_model.load(str(run_dir / "export" / "saved_model" / "1")).signatures["serving_default"]
        assert list(signature.structured_outputs) == ["probabilities"]
        # The server's TF Serving metadata is the signature TF Serving itself would find in the export.
        served = httpx.get(f"{server.url}/v1/models/shop/versions/1/metadata").json()["metadata"]["signature_def"]
        served = served["signature_def"]["serving_default"]
        exported = saved_model_utils.get_meta_graph_def(str(run_dir / "export" / "saved_model" / "1"), "serve")
        exported = exported.signature_def["serving_default"]
        assert served["method_name"] == exported.method_name
        for kind in ("inputs", "outputs"):
            assert set(served[kind]) == set(getattr(exported, kind))
            for name, tensor in getattr(exported, kind).items():
                assert served[kind][name] == {"dtype": types_pb2.DataType.Name(tensor.dtype), "name": tensor.name,
                                              "tensor_shape": {"dim": [{"size": str(dim.size), "name": dim.name}
                                                                       for dim in tensor.tensor_shape.dim],
                                                               "unknown_rank": tensor.tensor_shape.unknown_rank}}  # fmt: skip
    else:
        assert not list((run_dir / "export").glob(".staging-*"))


def test_export_goes_where_asked_and_replaces_only_an_earlier_export(served_run, real_data_dir, tmp_path):
    from fmnist.export import ExportError, export_run

    base = tmp_path / "models" / "fmnist"  # what TF Serving's --model_base_path would name
    output = run_cli("export", str(served_run), "--format", "saved_model", "--output", str(base), "--model-version", "2",
                     "--data-dir", str(real_data_dir)).stdout  # fmt: skip
    assert f"written to {base / '2'}" in output and "passed" in output
    assert [path.name for path in base.iterdir()] == ["2"] and (base / "2" / "saved_model.pb").is_file()
    first = (base / "2" / "saved_model.pb").stat().st_ino
    report = export_run(served_run, "saved_model", real_data_dir, output=base, model_version=2)  # again: replaced
    assert report["passed"] and (base / "2" / "saved_model.pb").stat().st_ino != first
    assert [path.name for path in base.iterdir()] == ["2"]  # the earlier export and the staging folder are gone
    report = export_run(served_run, "onnx", real_data_dir, output=tmp_path / "serving" / "fmnist.onnx")
    assert report["passed"] and (tmp_path / "serving" / "fmnist.onnx").is_file()

    (base / "3").mkdir()
    (base / "3" / "notes.txt").write_text("mine")
    refusals = {  # each refused before anything is written, with the fix in the message
        "saved_model to a folder that is not an export": (dict(output=base, model_version=3), "is not a SavedModel"),
        "saved_model with a version directory as the base path": (dict(output=base / "2"), "give the folder above it"),
        "onnx to a name without .onnx": (dict(output=tmp_path / "model.bin"), "ends in .onnx"),
        "onnx to a directory": (dict(output=base), "name the ONNX file itself"),
        "onnx with a version": (dict(model_version=2), "name it with --output"),
    }
    for case, (options, message) in refusals.items():
        export_format = "onnx" if case.startswith("onnx") else "saved_model"
        with pytest.raises(ExportError, match=message):
            export_run(served_run, export_format, real_data_dir, **options)
    assert (base / "3" / "notes.txt").read_text() == "mine" and sorted(path.name for path in base.iterdir()) == ["2", "3"]
    assert not (tmp_path / "model.bin").exists()


def test_export_refuses_a_format_the_backend_cannot_write_and_says_how(served_run, real_data_dir):
    result = run_cli("--backend", "torch", "export", str(served_run), "--format", "saved_model", "--data-dir",
                     str(real_data_dir), check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "SavedModel on the PyTorch backend" in result.stderr and "without --backend" in result.stderr


def test_a_mixed_precision_run_exports_to_onnx_computing_in_float32(tmp_path, real_data_dir, dataset):
    from fmnist.evaluate import predict_logits, softmax
    from fmnist.export import onnx_session, run_onnx
    from fmnist.runs import load_model

    run_dir = tmp_path / "mixed"
    run_cli("train", "--run-dir", str(run_dir), "--model", "tiny", "--mixed-precision", "--epochs", "1",
            "--train-subset", "1000", "--no-report", "--data-dir", str(real_data_dir))  # fmt: skip
    # the exporter wrote a graph mixing float16 and bfloat16, which ONNX Runtime refused to load
    assert "passed" in run_cli("export", str(run_dir), "--format", "onnx", "--data-dir", str(real_data_dir)).stdout
    images = dataset.x_test[:200]
    exported = run_onnx(onnx_session(run_dir / "export" / "model.onnx"), images)
    trained = load_model(run_dir)
    assert trained.get_layer("logits").dtype_policy.name == "float32" and trained.layers[-2].compute_dtype == "bfloat16"
    assert np.max(np.abs(exported - softmax(predict_logits(trained, images)))) < 0.02  # bfloat16's rounding only


def test_onnx_export_of_a_model_with_augmentation_leaves_it_out(tmp_path):
    from fmnist.evaluate import predict_logits, softmax
    from fmnist.export import with_softmax, write_onnx
    from fmnist.models import augmentation_layers, build_model

    model = build_model("tiny", augmentation=augmentation_layers(translate=2, flip=True, erase=1.0))
    images = np.random.default_rng(4).integers(0, 256, size=(16, 28, 28), dtype=np.uint8)
    run_exported = write_onnx(with_softmax(model), tmp_path / "model.onnx")  # random ops here would fail to load
    np.testing.assert_allclose(run_exported(images), softmax(predict_logits(model, images)), atol=1e-6)


# `fmnist predict` in this process, reporting afterwards which of the two slow imports it made
PREDICT_AND_LIST_IMPORTS = """
import sys
from fmnist.cli import main
status = main(sys.argv[1:])
print(sorted(name for name in sys.modules if name in ("tensorflow", "keras")), file=sys.stderr)
sys.exit(status)
"""


@pytest.fixture
def onnx_run(served_run, real_data_dir):
    """The served run with its ONNX export, made here unless an earlier test made it."""
    if not (served_run / "export" / "model.onnx").exists():
        run_cli("export", str(served_run), "--format", "onnx", "--data-dir", str(real_data_dir))
    return served_run


def test_evaluate_runs_the_onnx_export_beside_the_keras_model(onnx_run, dataset, tmp_path):
    """`fmnist evaluate --engine onnx`: the export on the test set, written beside the run's own results."""
    run_metrics = (onnx_run / "metrics.json").read_text()
    result = run_cli("evaluate", str(onnx_run), "--engine", "onnx")
    output = onnx_run / "evaluations" / "test-onnx"
    assert str(output) in result.stdout
    onnx_metrics, keras_metrics = json.loads((output / "metrics.json").read_text()), json.loads(run_metrics)
    assert onnx_metrics["engine"] == "onnx" and onnx_metrics["num_images"] == 10_000
    # the export computes what the model computes: the same accuracy within 3 of 10,000 images, the same loss
    assert abs(onnx_metrics["eval_accuracy"] - keras_metrics["test_accuracy"]) <= 3e-4
    assert abs(onnx_metrics["eval_loss"] - keras_metrics["test_loss"]) <= 1e-4
    assert (onnx_run / "metrics.json").read_text() == run_metrics  # the run's own results are left as they were
    # the user's own arrays, through the export
    np.save(tmp_path / "images.npy", dataset.x_test[:300])
    np.save(tmp_path / "labels.npy", dataset.y_test[:300])
    run_cli("evaluate", str(onnx_run), "--engine", "onnx", "--images", str(tmp_path / "images.npy"), "--labels",
            str(tmp_path / "labels.npy"), "--output", str(tmp_path / "mine"))  # fmt: skip
    with open(tmp_path / "mine" / "predictions.csv") as file:
        assert len(list(csv.DictReader(file))) == 300
    # a run without an export is told how to make one
    plain = tmp_path / "plain"
    shutil.copytree(onnx_run, plain, ignore=shutil.ignore_patterns("export", "evaluations"))
    refused = run_cli("evaluate", str(plain), "--engine", "onnx", check=False)
    assert refused.returncode == 1 and f"fmnist export {plain} --format onnx" in refused.stderr, refused.stderr


def test_predict_runs_an_onnx_export_without_importing_tensorflow(onnx_run, dataset, tmp_path):
    """As the server does: ONNX Runtime where the run has an ONNX export, so the command starts in a fraction of the time."""
    np.save(tmp_path / "x.npy", dataset.x_test[:1500])  # more than one batch of ONNX Runtime's
    arguments = ["predict", str(onnx_run), str(tmp_path / "x.npy"), "--json", "--top", "10"]
    result = subprocess.run([sys.executable, "-c", PREDICT_AND_LIST_IMPORTS, *arguments], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "[]"  # neither TensorFlow nor Keras was imported
    by_keras = json.loads(run_cli(*arguments, "--engine", "keras").stdout)
    for onnx_entry, keras_entry in zip(json.loads(result.stdout), by_keras, strict=True):
        assert onnx_entry["class_index"] == keras_entry["class_index"]
        onnx_top, keras_top = ({top["class_name"]: top["probability"] for top in entry["top"]}
                               for entry in (onnx_entry, keras_entry))  # fmt: skip
        assert max(abs(onnx_top[name] - keras_top[name]) for name in keras_top) <= 1e-5


def test_a_corrupt_onnx_export_stops_predict_and_serve_with_the_fix(onnx_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(onnx_run, broken)
    exported = broken / "export" / "model.onnx"
    exported.write_bytes(exported.read_bytes()[:5000])  # cut short, as by a full disk or an interrupted copy
    (tmp_path / "x.npy").write_bytes(b"")
    for command in (["predict", str(broken), str(tmp_path / "x.npy")], ["serve", str(broken), "--port", str(free_port())],
                    ["serve", str(broken), "--port", str(free_port()), "--workers", "2"]):  # fmt: skip
        result = run_cli(*command, check=False, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{exported} could not be loaded" in result.stderr and "INVALID_PROTOBUF" in result.stderr
        assert "fmnist export" in result.stderr and "--engine keras" in result.stderr
        if "--workers" in command:  # each worker fails to load the model, and none is restarted
            assert result.stderr.count("a worker could not start") == 1
        assert "serving" not in result.stdout  # no address announced that would answer nothing


def test_onnx_server_matches_keras_server(onnx_run, server, dataset):
    onnx_server = Server(onnx_run)  # "auto" picks ONNX Runtime now that the export exists
    try:
        body = kserve_body(dataset.x_test[:32])
        metadata = httpx.get(f"{onnx_server.url}/v2/models/shop").json()
        assert metadata["platform"] == "onnxruntime_onnx"
        onnx = np.array(httpx.post(f"{onnx_server.url}/v2/models/shop/infer", json=body).json()["outputs"][0]["data"])
        keras = np.array(httpx.post(f"{server.url}/v2/models/shop/infer", json=body).json()["outputs"][0]["data"])
        assert np.max(np.abs(onnx - keras)) <= 1e-5
    finally:
        onnx_server.close()
