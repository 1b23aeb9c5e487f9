"""Decode and validate the server's request bodies into uint8 image batches (n, 28, 28).

    images = kserve_images(json_body)        # Open Inference Protocol (KServe v2) /infer
    images = tf_serving_images(json_body)    # TF Serving REST :predict, arrays or {"b64": ...}

Each function raises RequestError (a 4xx with a message that says what is wrong) and never
lets a malformed body reach the model; `error_response` is the JSON every error is answered with.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from fastapi.responses import JSONResponse

from fmnist.images import ImageError, array_to_images, from_image_bytes

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    """Every error the server answers: {"error": "what is wrong, and what to do"}."""
    return JSONResponse({"error": message}, status_code=status)


def parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"malformed JSON: {error}") from None
    if not isinstance(value, dict):
        raise RequestError(f"the JSON body must be an object, not {type(value).__name__}")
    return value


def check_batch(count: int, max_batch: int) -> None:
    """Refuse empty requests and requests over the image limit, before any image is decoded."""
    if count == 0:
        raise RequestError("no images in the request")
    if count > max_batch:
        raise RequestError(f"{count} images in one request; the limit is {max_batch}", status=413)


def numeric_array(values, what: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise RequestError(f"{what}: not a rectangular array ({error})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise RequestError(f"{what}: values must be numbers")
    return array


def kserve_images(body: dict, max_batch: int) -> np.ndarray:
    """The single UINT8 input tensor of an /infer request, shape [n, 28, 28] (data flat or nested)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError('"inputs" must be a list holding one tensor: {"name": "images", "shape": [n, 28, 28], '
                           '"datatype": "UINT8", "data": [...]}')  # fmt: skip
    tensor = inputs[0]
    if tensor.get("name", INPUT_NAME) != INPUT_NAME:
        raise RequestError(f"unknown input {tensor.get('name')!r}; the model's input is {INPUT_NAME!r}")
    if tensor.get("datatype") != "UINT8":
        raise RequestError(f"datatype {tensor.get('datatype')!r}; the input is UINT8")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(size, int) for size in shape)
            and shape[1:] == [28, 28] and shape[0] >= 0):  # fmt: skip
        raise RequestError(f"shape {shape!r}; expected [n, 28, 28]")
    check_batch(shape[0], max_batch)
    data = numeric_array(tensor.get("data"), "data")
    if data.size != shape[0] * 28 * 28:
        raise RequestError(f"data holds {data.size} values; shape {shape} needs {shape[0] * 784}")
    if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
        raise RequestError("UINT8 data must be whole numbers from 0 to 255")
    return data.reshape(shape).astype(np.uint8)


def tf_serving_instances(body: dict) -> tuple[list, str]:
    """The images of a TF Serving REST body, and the key its answer goes under.

    The row format {"instances": [...]} is answered with {"predictions": [...]}, the columnar one
    {"inputs": [...]} (or {"inputs": {"images": [...]}}, the input named) with {"outputs": [...]}.
    """
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(f"unknown signature_name {signature!r}; the model has one, 'serving_default'")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError('the body needs one of "instances" (rows) and "inputs" (columns): '
                           'a list of 28x28 arrays or {"b64": "..."} images')  # fmt: skip
    if "instances" in body:
        return body["instances"], "predictions"
    inputs = body["inputs"]
    if isinstance(inputs, dict):  # inputs by name; the model has one
        if set(inputs) != {INPUT_NAME}:
            raise RequestError(f'"inputs" names {sorted(inputs)}; the model has one input, {INPUT_NAME!r}')
        inputs = inputs[INPUT_NAME]
    return inputs, "outputs"


def tf_serving_images(instances: list, max_batch: int) -> np.ndarray:
    """TF Serving's images: a list of 28x28 arrays, or of {"b64": base64 image file}."""
    if not isinstance(instances, list):
        raise RequestError('the images must be a list of 28x28 arrays or {"b64": "..."} images')
    check_batch(len(instances), max_batch)
    images = []
    for index, instance in enumerate(instances):
        what = f"instance {index}"
        try:
            if isinstance(instance, dict):
                images.append(from_image_bytes(decode_base64(instance.get("b64"), what), what))
            else:
                array = numeric_array(instance, what)
                if array.ndim != 2:
                    raise RequestError(f"{what}: shape {array.shape}; expected a 28x28 array or {{\"b64\": ...}}")
                images.append(array_to_images(array, what)[0])
        except ImageError as error:
            raise RequestError(str(error)) from None
    return np.stack(images)


def decode_base64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(f'{what}: "b64" must be a base64 string')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what}: invalid base64") from None
