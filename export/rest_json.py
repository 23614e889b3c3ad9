"""TensorFlow Serving REST API v1 JSON: requests to arrays, arrays to responses.

Pure functions (no HTTP, no models) that `export/serve.py` uses, following
https://www.tensorflow.org/tfx/serving/api_rest: `:predict` in row (`instances`) and
columnar (`inputs`) formats, `{"b64": ...}` for binary strings, outputs named `*_bytes`
always base64, `:classify` / `:regress` results, and metadata / status as TF Serving
prints the protos. A bad request raises `RequestError`, which the server sends as
`{"error": message}` with its HTTP status.

Example:
>>> specs = {"text": tf.TensorSpec([None], tf.string)}
>>> inputs, row_format = parse_predict({"instances": ["a b", {"b64": "Yw=="}]}, specs, 8)
>>> inputs["text"], row_format
(array([b'a b', b'c'], dtype=object), True)
>>> outputs = {"label": np.array([1, 0]), "scores": np.array([[0.25, 0.75], [0.5, 0.5]])}
>>> format_predict(outputs, row_format)  # one prediction per instance
{'predictions': [{'label': 1, 'scores': [0.25, 0.75]}, {'label': 0, 'scores': [0.5, 0.5]}]}
"""

import base64
import binascii
import math

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

PREDICT_FIELDS = frozenset({"signature_name", "instances", "inputs"})
EXAMPLE_FIELDS = frozenset({"signature_name", "context", "examples"})


CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED",
         500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}  # fmt: skip


class RequestError(ValueError):
    """A request the server refuses; `status` is its HTTP status (4xx), `code` the name of
    TF Serving's (gRPC) error code for it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    @property
    def code(self) -> str:
        return CODES.get(self.status, "UNKNOWN")


def _shape_and_leaves(value, name: str) -> tuple[tuple[int, ...], list]:
    """The shape of a nested JSON list and its leaves in row-major order."""
    if not isinstance(value, list):
        return (), [value]
    if not value:
        return (0,), []
    parts = [_shape_and_leaves(item, name) for item in value]
    inner = parts[0][0]
    if any(shape != inner for shape, _ in parts):
        raise RequestError(
            f"Input {name!r} is ragged: every list at one depth must have one length."
        )
    return (len(value), *inner), [leaf for _, leaves in parts for leaf in leaves]


def _string_leaf(leaf, name: str) -> bytes:
    if isinstance(leaf, bytes):  # from a tf.Example's bytes_list (gRPC classify / regress)
        return leaf
    if isinstance(leaf, str):
        return leaf.encode("utf-8")
    if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except binascii.Error as error:
            raise RequestError(f"Input {name!r} has invalid base64: {error}.") from None
    raise RequestError(
        f'Input {name!r} expects strings (DT_STRING) or {{"b64": ...}} objects, '
        f"received {type(leaf).__name__} {leaf!r:.60}."
    )


def decode_tensor(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON value (nested lists) as an array of `spec`'s dtype and a compatible shape."""
    shape, leaves = _shape_and_leaves(value, name)
    dtype = spec.dtype
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = [_string_leaf(leaf, name) for leaf in leaves]
    else:
        kind = "bool" if dtype.is_bool else "int" if dtype.is_integer else "float"
        for leaf in leaves:
            bad = isinstance(leaf, bool) != (kind == "bool") or not isinstance(leaf, int | float)
            if bad or (kind == "int" and not isinstance(leaf, int)):
                raise RequestError(
                    f"Input {name!r} expects {dtype.name} values, received "
                    f"{type(leaf).__name__} {leaf!r:.60}."
                )
        if kind == "int" and leaves and not dtype.min <= min(leaves) <= max(leaves) <= dtype.max:
            raise RequestError(f"Input {name!r} has a value outside the range of {dtype.name}.")
        array = np.asarray(leaves, dtype=dtype.as_numpy_dtype)
    array = array.reshape(shape)
    if not spec.shape.is_compatible_with(shape):
        raise RequestError(
            f"Input {name!r} expects shape {spec.shape.as_list()} ({dtype.name}), "
            f"received shape {list(shape)}."
        )
    return array


def _is_value_object(item) -> bool:
    return isinstance(item, dict) and set(item) == {"b64"}


def parse_predict(
    body: dict, specs: dict[str, tf.TensorSpec], max_batch_size: int
) -> tuple[dict[str, np.ndarray], bool]:
    """A `:predict` body as `({input name: array}, row_format)`.

    Args:
        body: the parsed JSON object.
        specs: the signature's inputs, `{name: tf.TensorSpec}`.
        max_batch_size: most rows (0-th dimension) any input may have.
    """
    unknown = sorted(set(body) - PREDICT_FIELDS)
    if unknown:
        raise RequestError(
            f"Unknown field(s) {unknown}; a predict request takes {sorted(PREDICT_FIELDS)}."
        )
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("A predict request needs exactly one of 'instances' or 'inputs'.")
    row_format = "instances" in body
    names = sorted(specs)
    if row_format:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError("'instances' must be a non-empty list.")
        named = all(isinstance(i, dict) and not _is_value_object(i) for i in instances)
        if not named and len(names) == 1:
            columns = {names[0]: instances}
        elif named:
            for instance in instances:
                if set(instance) != set(names):
                    raise RequestError(
                        f"Each instance must have exactly the inputs {names}; "
                        f"received {sorted(instance)}."
                    )
            columns = {name: [instance[name] for instance in instances] for name in names}
        else:
            raise RequestError(f"With several inputs {names}, each instance must be an object.")
    else:
        inputs = body["inputs"]
        named = isinstance(inputs, dict) and not _is_value_object(inputs)
        if not named and len(names) == 1:
            columns = {names[0]: inputs}
        elif named:
            if set(inputs) != set(names):
                raise RequestError(
                    f"'inputs' must name exactly the inputs {names}; received {sorted(inputs)}."
                )
            columns = inputs
        else:
            raise RequestError(f"With several inputs {names}, 'inputs' must be an object.")
    for name, column in columns.items():  # before decoding: refuse early, cheaply
        if isinstance(column, list) and len(column) > max_batch_size:
            raise RequestError(
                f"Input {name!r} has a batch of {len(column)} rows; the most this server "
                f"takes is max_batch_size={max_batch_size}."
            )
    arrays = {name: decode_tensor(columns[name], specs[name], name) for name in names}
    return arrays, row_format


def encode_tensor(name: str, array: np.ndarray):
    """An output array as TF Serving writes it to JSON (nested lists)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        binary = name.endswith("_bytes")

        def encode(value: bytes):
            if not binary:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass  # not text: base64, as for `_bytes` outputs
            return {"b64": base64.b64encode(value).decode("ascii")}

        flat = [encode(value) for value in array.ravel()]
    elif array.dtype.kind == "f":
        # Shortest decimal that reads back to the same float32/float64, as TF Serving prints.
        flat = [
            float(str(value)) if math.isfinite(value) else float(value) for value in array.ravel()
        ]
    else:
        flat = array.ravel().tolist()
    return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]


def format_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """`{"predictions": ...}` (row format) or `{"outputs": ...}` (columnar format)."""
    encoded = {name: encode_tensor(name, value) for name, value in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}
    rows = {np.shape(value)[0] if np.ndim(value) else None for value in outputs.values()}
    if len(rows) != 1 or None in rows:
        raise RequestError(
            "The outputs do not share one batch size; send the request in columnar "
            "format ('inputs') to receive them."
        )
    if len(encoded) == 1:
        return {"predictions": next(iter(encoded.values()))}
    return {
        "predictions": [
            dict(zip(encoded, row, strict=True)) for row in zip(*encoded.values(), strict=True)
        ]
    }


def parse_examples(body: dict, specs: dict[str, tf.TensorSpec], max_batch_size: int) -> dict:
    """A `:classify` / `:regress` body as predict inputs, for a one-string-input signature.

    Each example (merged with `context`) must hold that input by name, e.g.
    `{"examples": [{"text": "a fine film"}]}`.
    """
    unknown = sorted(set(body) - EXAMPLE_FIELDS)
    if unknown:
        raise RequestError(
            f"Unknown field(s) {unknown}; this request takes {sorted(EXAMPLE_FIELDS)}."
        )
    examples, context = body.get("examples"), body.get("context", {})
    return examples_to_inputs(examples, context, specs, max_batch_size)


def examples_to_inputs(examples, context, specs: dict[str, tf.TensorSpec], max_batch_size: int):
    """Examples (feature dicts, each merged with `context`) as the one string input of
    `specs`, `{name: (B,) array}`; a feature value is a string or a one-element list."""
    if len(specs) != 1 or next(iter(specs.values())).dtype != tf.string:
        raise RequestError("Classify and regress need a signature with one string input.")
    name = next(iter(specs))
    if not isinstance(examples, list) or not examples or not isinstance(context, dict):
        raise RequestError("'examples' must be a non-empty list of objects, 'context' an object.")
    values = []
    for example in examples:
        if not isinstance(example, dict) or set(example) & set(context):
            raise RequestError("Each example must be an object sharing no feature with 'context'.")
        features = {**context, **example}
        if set(features) != {name}:
            raise RequestError(
                f"Each example must hold exactly the feature {name!r}; received {sorted(features)}."
            )
        value = features[name]
        values.append(value[0] if isinstance(value, list) and len(value) == 1 else value)
    return parse_predict({"instances": values}, specs, max_batch_size)[0]


def classification(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, scores)`, both `(B, C)`, from one float `(B, C)` output.

    Labels come from a string output of the same shape when there is one (TF Serving's
    `classes`/`scores` convention), else they are empty strings as in TF Serving.
    """
    scores = [n for n, v in outputs.items() if v.ndim == 2 and v.dtype.kind == "f"]
    if len(scores) != 1:
        raise RequestError(
            "Classify needs a signature with exactly one float (batch, classes) output."
        )
    values = outputs[scores[0]]
    labels = [n for n, v in outputs.items() if v.shape == values.shape and v.dtype == object]
    names = outputs[labels[0]] if len(labels) == 1 else np.full(values.shape, b"", dtype=object)
    return names, values


def regression(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The `(B,)` values of one float output of shape `(B,)` or `(B, 1)`."""
    found = [
        v for v in outputs.values() if v.dtype.kind == "f" and v.ndim in (1, 2) and v.size == len(v)
    ]
    if len(found) != 1:
        raise RequestError("Regress needs a signature with exactly one float output per example.")
    return found[0].reshape(-1)


def format_classify(outputs: dict[str, np.ndarray]) -> dict:
    """`{"result": [[[label, score], ...], ...]}` (see `classification`)."""
    names, values = classification(outputs)
    labels_json, scores_json = encode_tensor("classes", names), encode_tensor("scores", values)
    return {
        "result": [
            [list(pair) for pair in zip(*row, strict=True)]
            for row in zip(labels_json, scores_json, strict=True)
        ]
    }


def format_regress(outputs: dict[str, np.ndarray]) -> dict:
    """`{"result": [value, ...]}` (see `regression`)."""
    return {"result": encode_tensor("outputs", regression(outputs))}


def signature_defs(signature_def_map: dict) -> dict:
    """`{key: SignatureDef proto}` as TF Serving's metadata JSON prints it."""
    return {
        key: json_format.MessageToDict(
            signature, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for key, signature in signature_def_map.items()
    }


def status_json(versions: dict[int, tuple[str, str]]) -> dict:
    """GetModelStatusResponse JSON from `{version: (state, error message)}`."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": state,
                "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error},
            }
            for version, (state, error) in sorted(versions.items(), reverse=True)
        ]
    }
