"""TF Serving's gRPC API (`PredictionService`, `ModelService`) over a `ModelServer`'s models.

The services of `tensorflow-serving-api`'s protos, answering from the same model registry
as the REST API (`ModelServer.models`, its batching and metrics):
`Predict`, `Classify`, `Regress`, `MultiInference` and `GetModelMetadata`;
`GetModelStatus` and `HandleReloadConfigRequest`. Errors carry TF Serving's status codes
and messages (`NOT_FOUND` for an unknown model or version, `INVALID_ARGUMENT` for an
unknown signature or input, a wrong dtype or shape). `Classify` / `Regress` take
`tf.Example`s whose feature named as the signature's one string input holds the text.

Example:
>>> import grpc
>>> from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
>>> from export.serve import ModelConfig, ModelServer
>>> class Doubler(tf.Module):
...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
...     def double(self, x):
...         return {"y": 2 * x}
>>> module = Doubler()
>>> tf.saved_model.save(module, "exports/doubler/1", signatures={"serving_default": module.double})
>>> with ModelServer([ModelConfig("doubler", "exports/doubler")]) as server:
...     server.start(port=None, grpc_port=0)  # no REST; gRPC on a free port
...     stub = prediction_service_pb2_grpc.PredictionServiceStub(
...         grpc.insecure_channel(server.grpc_address))
...     request = predict_pb2.PredictRequest()
...     request.model_spec.name = "doubler"
...     request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.5]))
...     tf.make_ndarray(stub.Predict(request, timeout=30).outputs["y"])
array([2., 5.], dtype=float32)
"""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from export import rest_json
from export.model_config import model_configs
from export.rest_json import RequestError

CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"
_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TF error codes are gRPC's


def _dtype_name(dtype: int) -> str:
    """TensorFlow's `DataTypeString`, as in its messages: `float`, `string`, `int32`."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _spec(spec, number: int | None = None, signature: str | None = None):
    """A response's `ModelSpec`: the request's name, the version served, the signature."""
    answer = type(spec)(name=spec.name)
    if number is not None:
        answer.version.value = number
    if signature is not None:
        answer.signature_name = signature
    return answer


def _feature_values(feature) -> list:
    kind = feature.WhichOneof("kind")
    return [] if kind is None else list(getattr(feature, kind).value)


def _examples(request_input) -> tuple[list[dict], dict]:
    """`(examples, context)` of an `Input` as feature dicts `{name: [values]}`."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise RequestError("Input is empty: give example_list or example_list_with_context.")
    examples = getattr(request_input, kind).examples
    context = request_input.example_list_with_context.context if kind.endswith("context") else None

    def features(example) -> dict:
        return {k: _feature_values(v) for k, v in example.features.feature.items()}

    return [features(e) for e in examples], {} if context is None else features(context)


class _Services(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """Both services; every call goes through `_serve` (errors, metrics)."""

    def __init__(self, server):
        self.server = server

    def _serve(self, api: str, answer, request, context):
        spec = getattr(request, "model_spec", None)  # MultiInference: set by `answer`
        labels = {"model": "" if spec is None else spec.name, "version": "", "signature": ""}
        start, status, failure = time.perf_counter(), "OK", None
        try:
            return answer(request, labels)
        except RequestError as error:
            status, failure = error.code, str(error)
        except tf.errors.OpError as error:  # e.g. an op refusing its input
            status, failure = _CODES[error.error_code].name, error.message
        except Exception as error:  # a server bug: INTERNAL, the server keeps serving
            status, failure = "INTERNAL", f"{type(error).__name__}: {error}"
        finally:
            if labels["model"] in self.server.models:
                key = (labels["model"], labels["version"], labels["signature"], api, "GRPC")
                self.server.metrics.record_request(key, status, time.perf_counter() - start)
        context.abort(grpc.StatusCode[status], failure)

    def _version(self, spec, labels: dict):
        model = self.server.model(spec.name)
        number = spec.version.value if spec.HasField("version") else None
        version = model.lookup(number, spec.version_label or None)
        labels["version"] = str(version.number)
        return model, version

    def _run(self, spec, labels: dict, inputs_of) -> tuple:
        """`(version, signature, outputs)`; `inputs_of(specs)` turns the request into inputs."""
        model, version = self._version(spec, labels)
        signature = labels["signature"] = version.signature(spec.signature_name)
        inputs = inputs_of(version.specs[signature])
        return version, signature, self.server.run(model.config.name, version, signature, inputs)

    def _predict_inputs(self, tensors, specs: dict) -> dict:
        sent, expected = set(tensors), set(specs)
        for alias in sorted(sent - expected):
            raise RequestError(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                f"in the set {{{','.join(sorted(expected))}}}."
            )
        if sent != expected:
            raise RequestError(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{}}. Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        inputs = {}
        for index, name in enumerate(sorted(specs)):
            spec, proto = specs[name], tensors[name]
            if proto.dtype != spec.dtype.as_datatype_enum:
                raise RequestError(
                    f"Expects arg[{index}] to be {_dtype_name(spec.dtype.as_datatype_enum)} "
                    f"but {_dtype_name(proto.dtype)} is provided"
                )
            try:
                array = tf.make_ndarray(proto)
            except (TypeError, ValueError) as error:
                raise RequestError(f"Input {name!r} is not a valid TensorProto: {error}") from None
            if not spec.shape.is_compatible_with(array.shape):
                raise RequestError(
                    f"Input {name!r} expects shape {spec.shape.as_list()} ({spec.dtype.name}), "
                    f"received shape {list(array.shape)}."
                )
            if array.ndim and len(array) > self.server.max_batch_size:
                raise RequestError(
                    f"Input {name!r} has a batch of {len(array)} rows; the most this server "
                    f"takes is max_batch_size={self.server.max_batch_size}."
                )
            inputs[name] = array
        return inputs

    def _example_inputs(self, request_input):
        examples, context = _examples(request_input)
        limit = self.server.max_batch_size
        return lambda specs: rest_json.examples_to_inputs(examples, context, specs, limit)

    def Predict(self, request, context):
        def answer(request, labels):
            version, signature, outputs = self._run(
                request.model_spec, labels, lambda s: self._predict_inputs(request.inputs, s)
            )
            wanted = list(request.output_filter) or list(outputs)
            for alias in wanted:
                if alias not in outputs:
                    raise RequestError(
                        f"output tensor alias not found in signature: {alias} Outputs "
                        f"expected to be in the set {{{','.join(sorted(outputs))}}}."
                    )
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(_spec(request.model_spec, version.number, signature))
            for alias in wanted:
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
            return response

        return self._serve("predict", answer, request, context)

    def _classification(self, outputs) -> classification_pb2.ClassificationResult:
        names, scores = rest_json.classification(outputs)
        result = classification_pb2.ClassificationResult()
        for row_names, row_scores in zip(names, scores, strict=True):
            classes = result.classifications.add().classes
            for label, score in zip(row_names, row_scores, strict=True):
                classes.add(label=label.decode("utf-8", "replace"), score=float(score))
        return result

    def _regression(self, outputs) -> regression_pb2.RegressionResult:
        result = regression_pb2.RegressionResult()
        for value in rest_json.regression(outputs):
            result.regressions.add(value=float(value))
        return result

    def Classify(self, request, context):
        return self._serve_examples(
            "classify", self._classification, classification_pb2.ClassificationResponse,
            request, context,
        )  # fmt: skip

    def Regress(self, request, context):
        return self._serve_examples(
            "regress", self._regression, regression_pb2.RegressionResponse, request, context
        )

    def _serve_examples(self, api: str, make_result, response_class, request, context):
        """Classify / Regress: the signature run on the request's `tf.Example`s."""

        def answer(request, labels):
            inputs_of = self._example_inputs(request.input)
            version, signature, outputs = self._run(request.model_spec, labels, inputs_of)
            spec = _spec(request.model_spec, version.number, signature)
            return response_class(model_spec=spec, result=make_result(outputs))

        return self._serve(api, answer, request, context)

    def MultiInference(self, request, context):
        def answer(request, labels):
            tasks = request.tasks
            if not tasks:
                raise RequestError("MultiInferenceRequest must specify at least one task.")
            labels["model"] = tasks[0].model_spec.name
            if len({task.model_spec.name for task in tasks}) > 1:
                raise RequestError(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            signatures = [task.model_spec.signature_name or "serving_default" for task in tasks]
            for signature in signatures:
                if signatures.count(signature) > 1:
                    raise RequestError(f"Duplicate evaluation of signature: {signature}")
            response, inputs_of = inference_pb2.MultiInferenceResponse(), None
            for task in tasks:
                if task.method_name not in (CLASSIFY, REGRESS):
                    raise RequestError(f"Unsupported signature method_name: {task.method_name}")
                inputs_of = inputs_of or self._example_inputs(request.input)
                version, signature, outputs = self._run(task.model_spec, labels, inputs_of)
                result = response.results.add()
                result.model_spec.CopyFrom(_spec(task.model_spec, version.number, signature))
                if task.method_name == CLASSIFY:
                    result.classification_result.CopyFrom(self._classification(outputs))
                else:
                    result.regression_result.CopyFrom(self._regression(outputs))
            return response

        return self._serve("multi_inference", answer, request, context)

    def GetModelMetadata(self, request, context):
        def answer(request, labels):
            fields = list(request.metadata_field)
            if not fields:
                raise RequestError(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in fields:
                if field != "signature_def":
                    raise RequestError(f"Metadata field {field} is not supported")
            _, version = self._version(request.model_spec, labels)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.CopyFrom(_spec(request.model_spec, version.number))
            defs = get_model_metadata_pb2.SignatureDefMap(signature_def=version.signature_def_map)
            response.metadata["signature_def"].Pack(defs)
            return response

        return self._serve("metadata", answer, request, context)

    def GetModelStatus(self, request, context):
        def answer(request, labels):
            spec, response = request.model_spec, get_model_status_pb2.GetModelStatusResponse()
            if spec.name not in self.server.models:
                raise RequestError(f"Could not find any versions of model {spec.name}", 404)
            number = spec.version.value if spec.HasField("version") else None
            states = self.server.models[spec.name].states(number, spec.version_label or None)
            for number, (state, error) in sorted(states.items(), reverse=True):
                status = response.model_version_status.add(version=number)
                status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                status.status.error_code = 2 if error else 0  # tensorflow.error.Code UNKNOWN
                status.status.error_message = error
            return response

        return self._serve("status", answer, request, context)

    def HandleReloadConfigRequest(self, request, context):
        def answer(request, labels):
            try:
                self.server.reload(model_configs(request.config))
            except ValueError as error:
                raise RequestError(str(error)) from None
            return model_management_pb2.ReloadConfigResponse()

        return self._serve("reload_config", answer, request, context)


class GrpcServer:
    """The gRPC services of `model_server` on one port (see the module docstring).

    Args:
        model_server: the `ModelServer` whose models, batching and metrics are used.
        max_message_bytes: largest request or response message.
        max_workers: requests handled at once; more wait in gRPC's queue.
    """

    def __init__(self, model_server, max_message_bytes: int = 16 << 20, max_workers: int = 64):
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._server = grpc.server(ThreadPoolExecutor(max_workers), options=options)
        services = _Services(model_server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, self._server)

    def start(self, host: str, port: int) -> str:
        """Listens on `host:port` (0: a free port); returns the `host:port` bound."""
        bound = self._server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise RuntimeError(f"Cannot listen for gRPC on {host}:{port}.")
        self._server.start()
        return f"{host}:{bound}"

    def stop(self, grace_s: float) -> None:
        """Refuses new calls and waits up to `grace_s` for those in flight."""
        self._server.stop(grace_s).wait()
