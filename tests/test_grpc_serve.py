"""The gRPC API of the local TF Serving, driven by `tensorflow-serving-api`'s own stubs.

The toy model of `tests/toy_model.py` (numpy answers) checks every RPC, its errors (TF
Serving's codes and messages) and reloading; `test_every_signature_of_every_export`
serves real tfllm exports and compares gRPC and REST answers with in-process calls.
"""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
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

from export.load_test import compare_outputs
from export.serve import ModelConfig, ModelServer
from tests.test_serve import http
from tests.toy_model import LABELS, SENTENCES, expected_probabilities


@pytest.fixture(scope="module")
def server(toy_base):
    config = ModelConfig("toy", str(toy_base), versions=(1,), labels={"stable": 1})
    with ModelServer([config], max_batch_size=8) as server:
        server.start(grpc_port=0)
        yield server


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def predict_request(inputs: dict, name="toy", signature="", version=None, label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def examples(texts, feature="text"):
    protos = []
    for text in texts:
        example = example_pb2.Example()
        example.features.feature[feature].bytes_list.value.append(text.encode())
        protos.append(example)
    return protos


@pytest.mark.parametrize(
    ("version", "label", "scale"), [(None, None, 2.0), (1, None, 1.0), (None, "stable", 1.0)]
)
def test_predict_by_version_and_label(stubs, version, label, scale):
    prediction, _ = stubs
    request = predict_request({"text": SENTENCES}, "toy", "classify", version, label)
    response = prediction.Predict(request, timeout=30)
    expected = expected_probabilities(SENTENCES, scale)
    assert response.model_spec.name == "toy" and response.model_spec.signature_name == "classify"
    assert response.model_spec.version.value == (version or (1 if label else 2))
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert tf.make_ndarray(response.outputs["labels"]).tolist() == [
        LABELS[i].encode() for i in expected.argmax(1)
    ]
    request.output_filter.append("label_ids")  # only the outputs asked for
    response = prediction.Predict(request, timeout=30)
    assert list(response.outputs) == ["label_ids"]
    assert tf.make_ndarray(response.outputs["label_ids"]).tolist() == expected.argmax(1).tolist()


def test_predict_several_inputs_and_bytes(stubs):
    prediction, _ = stubs
    x, k = np.array([[1.5, -2.0], [0.25, 4.0]], np.float32), np.array([3, -1], np.int32)
    response = prediction.Predict(predict_request({"x": x, "k": k}, signature="scale"), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), x * k[:, None] * 2.0)
    raw = np.array(["tschüß".encode(), b"\xff\x00"], dtype=object)  # not UTF-8: bytes pass
    response = prediction.Predict(predict_request({"text": raw}, signature="echo"), timeout=30)
    assert tf.make_ndarray(response.outputs["upper_bytes"]).tolist() == [
        "TSCHüß".encode(), b"\xff\x00"
    ]  # fmt: skip


def test_classify_regress_and_multi_inference_take_tf_examples(stubs):
    prediction, _ = stubs
    texts = ["a b c d e", "x"]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    request.input.example_list.examples.extend(examples(texts))
    response = prediction.Classify(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default"
    scores = [[c.score for c in row.classes] for row in response.result.classifications]
    np.testing.assert_allclose(scores, expected_probabilities(texts, 2.0), atol=1e-6)
    assert [c.label for c in response.result.classifications[0].classes] == ["", ""]
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "count"
    context = request.input.example_list_with_context
    context.examples.add()  # the text comes from the context
    context.context.features.feature["text"].bytes_list.value.append(b"one two three")
    response = prediction.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.0]
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "classify"), ("count", "regress")):
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "toy", signature
        task.model_spec.version.value = 1
    request.input.example_list.examples.extend(examples(texts))
    classified, regressed = prediction.MultiInference(request, timeout=30).results
    assert classified.model_spec.version.value == 1
    rows = classified.classification_result.classifications
    scores = [[c.score for c in row.classes] for row in rows]
    np.testing.assert_allclose(scores, expected_probabilities(texts, 1.0), atol=1e-6)
    assert [r.value for r in regressed.regression_result.regressions] == [5.0, 1.0]


def test_metadata_and_status_match_rest(stubs, server, toy_base):
    prediction, models = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    response = prediction.GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    assert response.model_spec.version.value == 2
    rest = http(f"{server.url}/v1/models/toy/metadata")[1]["metadata"]["signature_def"]
    assert set(defs.signature_def) == set(rest["signature_def"]) >= {"classify", "scale", "echo"}
    text = defs.signature_def["classify"].inputs["text"]
    assert text.dtype == tf.string.as_datatype_enum and text.tensor_shape.dim[0].size == -1
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    statuses = models.GetModelStatus(request, timeout=30).model_version_status
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [
        (2, available, 0),
        (1, available, 0),
    ]
    request.model_spec.version_label = "stable"
    statuses = models.GetModelStatus(request, timeout=30).model_version_status
    assert [s.version for s in statuses] == [1]


NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT


ERRORS = [  # (inputs, predict_request keywords, code, TF Serving's message)
    ({"text": ["a"]}, {"name": "nope"}, NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ({"text": ["a"]}, {"version": 7}, NOT_FOUND,
     "Servable not found for request: Specific(toy, 7)"),
    ({"text": ["a"]}, {"label": "canary"}, NOT_FOUND,
     "Unrecognized servable version label: canary"),
    ({"text": ["a"]}, {"signature": "nope"}, INVALID,
     'Serving signature name: "nope" not found in signature def'),
    ({"txt": ["a"]}, {}, INVALID,
     "input tensor alias not found in signature: txt. Inputs expected to be in the set {text}."),
    ({"x": [[1.0, 2.0]]}, {"signature": "scale"}, INVALID,
     "input size does not match signature: 1!=2 len({x}) != len({k,x}). Sent extra: {}. "
     "Missing but required: {k}."),
    ({"text": [1.5]}, {}, INVALID, "Expects arg[0] to be string but float is provided"),
    ({"x": [1.0, 2.0], "k": [1]}, {"signature": "scale"}, INVALID,
     "Input 'x' expects shape [None, 2] (float32), received shape [2]."),
    ({"text": ["a"] * 9}, {}, INVALID,
     "Input 'text' has a batch of 9 rows; the most this server takes is max_batch_size=8."),
]  # fmt: skip


@pytest.mark.parametrize(("inputs", "keywords", "code", "message"), ERRORS)
def test_errors_carry_tf_serving_codes_and_messages(stubs, inputs, keywords, code, message):
    prediction, _ = stubs
    with pytest.raises(grpc.RpcError) as error:
        prediction.Predict(predict_request(inputs, **keywords), timeout=30)
    assert (error.value.code(), error.value.details()) == (code, message)
    response = prediction.Predict(predict_request({"text": ["a b"]}), timeout=30)  # still serving
    assert tf.make_ndarray(response.outputs["labels"]).tolist() == [b"short"]


def test_other_rpc_errors(stubs):
    prediction, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        models.GetModelStatus(request, timeout=30)
    assert error.value.code() == NOT_FOUND
    assert error.value.details() == "Could not find any versions of model nope"
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    request.model_spec.name = "toy"
    with pytest.raises(grpc.RpcError) as error:
        prediction.GetModelMetadata(request, timeout=30)
    assert error.value.code() == INVALID
    assert error.value.details() == "Metadata field graph is not supported"
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "scale"
    request.input.example_list.examples.extend(examples(["a"]))
    with pytest.raises(grpc.RpcError) as error:
        prediction.Classify(request, timeout=30)
    assert error.value.code() == INVALID and "one string input" in error.value.details()


def test_reload_config_serves_the_new_model_list(toy_base):
    with ModelServer([ModelConfig("toy", str(toy_base))]) as server:
        server.start(port=None, grpc_port=0)
        channel = grpc.insecure_channel(server.grpc_address)
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            f"""model_config_list {{
              config {{ name: "old" base_path: "{toy_base}" model_platform: "tensorflow"
                       model_version_policy {{ specific {{ versions: 1 }} }} }}
              config {{ name: "both" base_path: "{toy_base}"
                       model_version_policy {{ all {{}} }}
                       version_labels {{ key: "new" value: 2 }} }}
            }}""",
            request.config,
        )
        assert models.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
        assert sorted(server.models) == ["both", "old"]
        for name, label, scale in (("old", None, 1.0), ("both", "new", 2.0)):
            response = prediction.Predict(
                predict_request({"text": SENTENCES[:2]}, name, "classify", label=label), timeout=30
            )
            np.testing.assert_allclose(
                tf.make_ndarray(response.outputs["probabilities"]),
                expected_probabilities(SENTENCES[:2], scale),
                atol=1e-6,
            )
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "both"
        assert [s.version for s in models.GetModelStatus(status).model_version_status] == [2, 1]
        with pytest.raises(grpc.RpcError) as error:  # the old list is gone
            prediction.Predict(predict_request({"text": ["a"]}, "toy"), timeout=30)
        assert error.value.code() == NOT_FOUND
        request.config.model_config_list.config[0].base_path = str(toy_base / "missing")
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(request, timeout=60)
        assert error.value.code() == INVALID
        assert "`base_path` must be a folder" in error.value.details()
        assert sorted(server.models) == ["both", "old"]  # a bad config changes nothing
        channel.close()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One tiny export of each kind: `(base path, {model name: tokenizer})`."""
    import keras

    from export.saved_model import export_saved_model
    from tfllm.models import (
        BertBackbone,
        CausalLM,
        GPTBackbone,
        MaskedLM,
        TextClassifier,
        TokenClassifier,
    )
    from tfllm.tokenizers import WordPieceTokenizer

    words = ["the", "a", "cat", "sat", "on", "mat", ".", "paris", "is", "alice", "flew", "to"]
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    keras.utils.set_random_seed(4)
    size = {"vocabulary_size": len(tokenizer.vocabulary), "max_sequence_length": 16}
    bert = BertBackbone.from_preset("bert_tiny", dropout=0.0, **size)
    gpt = GPTBackbone.from_preset("gpt_tiny", dropout=0.0, **{**size, "max_sequence_length": 32})
    base = tmp_path_factory.mktemp("exports")
    models = {
        "classifier": (TextClassifier(bert, 3, dropout=0.0), {"label_names": ["n", "o", "p"]}),
        "encoder": (bert, {}),
        "masked_lm": (MaskedLM(bert), {"top_k": 3}),
        "tagger": (TokenClassifier(bert, 3, dropout=0.0), {"label_names": ["O", "B-x", "I-x"]}),
        "causal_lm": (CausalLM(gpt), {"max_new_tokens": 4}),
    }
    for name, (model, options) in models.items():
        export_saved_model(model, base, name, tokenizer=tokenizer, validate=False, **options)
    return base, tokenizer, models


DEFAULTS = {"classifier": "classify", "encoder": "embed", "masked_lm": "fill_mask",
            "tagger": "tag", "causal_lm": "generate"}  # fmt: skip


@pytest.mark.slow
def test_every_signature_of_every_export(exports):
    """gRPC `Predict` and REST `:predict` against in-process calls of the same SavedModel,
    for each kind of tfllm export; the classifier also through `Classify` and `:classify`."""
    from export.saved_model import example_inputs

    base, tokenizer, models = exports
    configs = [ModelConfig(name, str(base / name)) for name in models]
    with ModelServer(configs) as server:
        server.start(grpc_port=0)
        channel = grpc.insecure_channel(server.grpc_address)
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        seen = set()
        for name in models:
            loaded = server.models[name].versions[1]  # the server's copy, called directly
            for signature, function in loaded.signatures.items():
                kind = DEFAULTS[name] if signature == "serving_default" else signature
                inputs = example_inputs(kind, tokenizer)
                tensors = {k: tf.constant(v) for k, v in inputs.items()}
                expected = {k: v.numpy() for k, v in function(**tensors).items()}
                request = predict_request(inputs, name, signature)
                response = prediction.Predict(request, timeout=60)
                got = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
                compare_outputs(expected, got)
                columns = {k: v.tolist() for k, v in inputs.items()}
                columns = {
                    k: [s.decode() if isinstance(s, bytes) else s for s in v]
                    for k, v in columns.items()
                }  # noqa: E501
                body = {"signature_name": signature, "inputs": columns}
                status, answer = http(f"{server.url}/v1/models/{name}:predict", body)
                assert status == 200, answer
                outputs = answer["outputs"]
                outputs = outputs if len(expected) > 1 else {next(iter(expected)): outputs}
                compare_outputs(expected, outputs)
                seen.add((name, signature))
        assert {s for _, s in seen} >= {
            "classify", "embed", "fill_mask", "tag", "generate", "generate_with_options"
        }  # fmt: skip
        texts = ["the cat sat on the mat .", "alice flew to paris"]
        classify = server.models["classifier"].versions[1].signatures["classify"]
        expected = classify(text=tf.constant(texts))
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "classifier"
        request.input.example_list.examples.extend(examples(texts))
        rows = prediction.Classify(request, timeout=60).result.classifications
        assert [[c.label for c in row.classes] for row in rows] == [["n", "o", "p"]] * 2
        scores = [[c.score for c in row.classes] for row in rows]
        np.testing.assert_allclose(scores, expected["probabilities"].numpy(), atol=1e-5)
        channel.close()
