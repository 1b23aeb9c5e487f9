"""HTTP prediction service for a run: KServe v2, TF Serving REST, image upload, a web page, metrics.

    fmnist serve runs/baseline --port 8000            # then open http://127.0.0.1:8000/
    fmnist serve runs/best --model-name fmnist --model-version 2 --model-label stable
    app = create_app(ServeConfig(run_dir="runs/baseline"))   # the ASGI app, for tests and embedding

The model is served under the run directory's name (or `model_name`) as one version
(`model_version`, 1 unless given), with TF Serving's version labels if given. Requests from
concurrent clients are micro-batched (engine.py); ONNX Runtime runs the model when `fmnist
export RUN --format onnx` has been done, Keras otherwise. Every bad request gets a 4xx with {"error": "..."}.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import importlib.resources
import io
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException

from fmnist import __version__, runs
from fmnist.engine import MicroBatcher, load_engines
from fmnist.images import ImageError, check_background, from_image_bytes
from fmnist.metrics import LimitAndMeasure, ServerMetrics
from fmnist.payloads import (
    INPUT_NAME,
    OUTPUT_NAME,
    RequestError,
    check_batch,
    error_response,
    kserve_images,
    parse_json,
    tf_serving_images,
    tf_serving_instances,
)
from fmnist.predict import describe

# Model names and version labels go into URL paths, before ":predict" in TF Serving's
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    run_dir: str  # the run to serve
    engine: str = "auto"  # "auto" (ONNX Runtime if exported), "onnx" or "keras"
    max_batch: int = 256  # most images per model call (more waiting run as several calls)
    max_delay_ms: float = 2.0  # longest wait for more requests to join a batch
    max_request_images: int = 1024  # most images in one request
    max_body_bytes: int = 10 * 1024 * 1024  # larger request bodies get 413
    threads: int = 0  # ONNX Runtime threads per server process (0: the cores divided among the workers)
    ensemble: tuple[str, ...] = ()  # other runs whose probabilities are averaged with run_dir's
    tta: bool | None = None  # flip test-time augmentation (None: as run_dir was evaluated)
    tta_shift: int | None = None  # with tta, shifted views too, up to this many pixels (None: as run_dir was evaluated)
    model_name: str | None = None  # the name in both protocols' paths (None: the run directory's name)
    model_version: int = 1  # the one version served, in both protocols' paths and answers
    model_labels: tuple[str, ...] = ()  # TF Serving's version labels for it (/v1/models/NAME/labels/LABEL)

    def __post_init__(self):
        for name in ("max_batch", "max_request_images", "max_body_bytes", "model_version"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.max_delay_ms >= 0:  # NaN fails too
            raise ValueError(f"max_delay_ms must be 0 or more, got {self.max_delay_ms}")
        for what, name in [("model name", self.model_name), *(("version label", label) for label in self.model_labels)]:
            if name is not None and not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' (it goes into URL paths), "
                                 "starting with a letter or digit")  # fmt: skip
        if any(label.isdigit() for label in self.model_labels):
            raise ValueError(f"version labels {list(self.model_labels)}: a label is a name, not a number (the number is "
                             "the version itself: --model-version)")  # fmt: skip

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.run_dir).resolve().name


def create_app(config: ServeConfig, on_ready: Callable[[], None] | None = None) -> FastAPI:
    run_dir = runs.require_run(config.run_dir)
    model_name, model_version = config.served_name, str(config.model_version)
    run_metrics = runs.read_json(run_dir / runs.METRICS)
    class_names = runs.ensemble_class_names([run_dir, *map(Path, config.ensemble)])
    tta, tta_shift = runs.run_tta(run_dir, config.tta, config.tta_shift)
    engine = load_engines([run_dir, *config.ensemble], config.engine, config.threads or None, tta, tta_shift)
    metrics = ServerMetrics()
    input_shape, output_shape = [-1, 28, 28], [-1, len(class_names)]  # in both protocols' metadata (-1: any batch)
    batcher = MicroBatcher(engine, config.max_batch, config.max_delay_ms / 1000, on_batch=metrics.batch_size.observe)

    @asynccontextmanager
    async def lifespan(app):
        gc.collect()
        gc.freeze()  # the libraries' many long-lived objects leave the collector's scans: shorter pauses under load
        if on_ready:  # the server takes requests from here on
            on_ready()
        yield
        await batcher.stop()

    app = FastAPI(title="fmnist", version=__version__, lifespan=lifespan,
                  description=f"Fashion-MNIST classifier `{model_name}` ({engine.platform})")  # fmt: skip

    def require_model(name: str, version: str | None = None, label: str | None = None) -> None:
        """404 unless the path names the served model, and its version or one of its labels where it names one."""
        if name != model_name:
            raise RequestError(f"unknown model {name!r}; this server serves {model_name!r}", status=404)
        if version is not None and version != model_version:  # a client that asks for a version by its path
            raise RequestError(f"model {name!r} has no version {version!r}; this server serves version {model_version}",
                               status=404)  # fmt: skip
        if label is not None and label not in config.model_labels:
            labels = ", ".join(map(repr, config.model_labels)) or "none (fmnist serve --model-label names one)"
            raise RequestError(f"model {name!r} has no version label {label!r}; its labels: {labels}", status=404)

    def require_path(request: Request) -> None:
        parameters = request.path_params
        require_model(parameters["name"], parameters.get("version"), parameters.get("label"))

    app.add_middleware(LimitAndMeasure, max_body_bytes=config.max_body_bytes, metrics=metrics)

    @app.exception_handler(RequestError)
    async def request_error(request, error: RequestError):
        return error_response(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        if request.url.path == "/predict":
            problems += "; send the images as multipart/form-data, one field named `files` per image (curl -F files=@shirt.png)"
        return error_response(422, problems)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return importlib.resources.files("fmnist").joinpath("static/index.html").read_text()

    @app.get("/info", summary="The served model: name, engine, classes, test accuracy (of the first run)")
    async def info():
        return {"model": model_name, "version": config.model_version, "labels": list(config.model_labels),
                "architecture": run_metrics["model"], "platform": engine.platform,
                "test_accuracy": run_metrics["test_accuracy"], "class_names": class_names,
                "ensemble": [str(run_dir), *config.ensemble], "tta": tta, "tta_shift": tta_shift}  # fmt: skip

    @app.get("/v2/health/live", summary="KServe v2: server liveness")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="KServe v2: server readiness")
    async def ready():
        return {"ready": True}

    @app.get("/v2", summary="KServe v2: server metadata")
    async def server_metadata():
        return {"name": "fmnist", "version": __version__, "extensions": []}

    # Each model route also answers under .../versions/N/... (both protocols' optional version in the path),
    # and TF Serving's under .../labels/LABEL/... too; the handlers read these from the path, so that they
    # are no query parameters of the plain routes.
    @app.get("/v2/models/{name}", summary="KServe v2: model metadata")
    @app.get("/v2/models/{name}/versions/{version}", summary="KServe v2: model metadata of a version")
    async def model_metadata(name: str, request: Request):
        require_path(request)
        return {"name": model_name, "versions": [model_version], "platform": engine.platform,
                "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": input_shape}],
                "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": output_shape}]}  # fmt: skip

    @app.get("/v2/models/{name}/ready", summary="KServe v2: model readiness")
    @app.get("/v2/models/{name}/versions/{version}/ready", summary="KServe v2: readiness of a version")
    async def model_ready(name: str, request: Request):
        require_path(request)
        return {"name": model_name, "ready": True}

    @app.post("/v2/models/{name}/infer", summary="KServe v2: inference on a UINT8 [n, 28, 28] tensor")
    @app.post("/v2/models/{name}/versions/{version}/infer", summary="KServe v2: inference by a version")
    async def infer(name: str, request: Request):
        require_path(request)
        body = parse_json(await request.body())
        probabilities = await batcher.submit(kserve_images(body, config.max_request_images))
        response = {"model_name": model_name, "model_version": model_version,
                    "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(probabilities.shape),
                                 "data": probabilities.ravel().tolist()}]}  # fmt: skip
        if "id" in body:
            response["id"] = body["id"]
        return JSONResponse(response)  # a Response skips FastAPI's slow generic encoder

    @app.get("/v1/models/{name}", summary="TF Serving REST: model status")
    @app.get("/v1/models/{name}/versions/{version}", summary="TF Serving REST: status of a version")
    @app.get("/v1/models/{name}/labels/{label}", summary="TF Serving REST: status of a labelled version")
    async def model_status(name: str, request: Request):
        require_path(request)
        return {"model_version_status": [{"version": model_version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}  # fmt: skip

    @app.get("/v1/models/{name}/metadata", summary="TF Serving REST: model metadata (the serving signature)")
    @app.get("/v1/models/{name}/versions/{version}/metadata", summary="TF Serving REST: metadata of a version")
    @app.get("/v1/models/{name}/labels/{label}/metadata", summary="TF Serving REST: metadata of a labelled version")
    async def tf_serving_metadata(name: str, request: Request):
        require_path(request)
        signature = {"inputs": {INPUT_NAME: tensor_info("DT_UINT8", input_shape, f"serving_default_{INPUT_NAME}:0")},
                     "outputs": {OUTPUT_NAME: tensor_info("DT_FLOAT", output_shape, "StatefulPartitionedCall:0")},
                     "method_name": "tensorflow/serving/predict"}  # fmt: skip
        return {"model_spec": {"name": model_name, "signature_name": "", "version": model_version},
                "metadata": {"signature_def": {"@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                                               "signature_def": {"serving_default": signature}}}}  # fmt: skip

    @app.post("/v1/models/{target}", summary="TF Serving REST: POST /v1/models/NAME:predict")
    @app.post("/v1/models/{name}/versions/{target}", summary="TF Serving REST: POST /v1/models/NAME/versions/N:predict")
    @app.post("/v1/models/{name}/labels/{target}", summary="TF Serving REST: POST /v1/models/NAME/labels/LABEL:predict")
    async def tf_serving_predict(target: str, request: Request):
        prefix, _, verb = target.partition(":")  # NAME:predict, or VERSION:predict or LABEL:predict after the name
        if "name" not in request.path_params:
            require_model(prefix)
        elif request.scope["route"].path.startswith("/v1/models/{name}/labels/"):
            require_model(request.path_params["name"], label=prefix)
        else:
            require_model(request.path_params["name"], prefix)
        if verb != "predict":
            raise RequestError(f"unsupported verb {verb!r}; this server answers :predict", status=404)
        instances, answer_key = tf_serving_instances(parse_json(await request.body()))
        has_files = isinstance(instances, list) and any(isinstance(instance, dict) for instance in instances)
        if has_files:  # encoded images are decoded in a thread, as uploads are
            images = await run_in_threadpool(tf_serving_images, instances, config.max_request_images)
        else:
            images = tf_serving_images(instances, config.max_request_images)
        probabilities = await batcher.submit(images)
        return JSONResponse({answer_key: probabilities.tolist()})

    @app.post("/predict", summary="Upload image files (multipart field 'files'); top classes for each")
    async def upload(files: list[UploadFile] = File(..., description="PNG, JPEG or any image Pillow reads"),
                     background: str = Form("auto", description="auto (told from each image's border), light or dark")):
        """Each file gets its prediction, or its own error beside the others' predictions (as `fmnist predict`
        does); the answer is 400 only when no file could be classified."""
        try:
            check_background(background)
        except ValueError as error:
            raise RequestError(str(error)) from None
        check_batch(len(files), config.max_request_images)
        images, errors = {}, {}
        for position, upload_file in enumerate(files):
            try:  # decoding a large image takes a while: in a thread, so the event loop goes on serving
                data, name = await upload_file.read(), upload_file.filename or "upload"
                images[position] = await run_in_threadpool(from_image_bytes, data, name, background)
            except ImageError as error:
                errors[position] = str(error)
        if not images:
            raise RequestError("; ".join(errors.values()))
        probabilities = dict(zip(images, await batcher.submit(np.stack(list(images.values()))), strict=True))
        return {"model": model_name, "predictions": [
            {"filename": upload_file.filename, "error": errors[position]} if position in errors else
            {"filename": upload_file.filename, **describe(probabilities[position], class_names),
             "input_png": png_data_uri(images[position])}
            for position, upload_file in enumerate(files)
        ]}  # fmt: skip

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics():
        payload, content_type = metrics.exposition()
        return Response(payload, media_type=content_type)

    return app


def tensor_info(dtype: str, shape: list[int], name: str) -> dict:
    """A tensor of a TF Serving signature, as its JSON metadata writes one (-1: any size)."""
    dims = [{"size": str(size), "name": ""} for size in shape]
    return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}


def png_data_uri(image) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
