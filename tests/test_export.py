"""Export: every signature reloaded and called on real strings, against the Keras models.

One export per model kind (module fixtures: exports take seconds). The classifier is
exported from a run folder by `tools/export.py`, with the full validation (fresh process +
saved_model_cli);
references are numpy on the in-process Keras model's outputs, `tfllm.generation.generate`
and a Python BIO decoder.
"""

import contextlib
import functools
import io
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import tools.export
from export import saved_model
from export.saved_model import check_export, example_inputs, export_saved_model
from tests.helpers import randomize_weights
from tfllm.config import RunConfig
from tfllm.generation import TopKSampler, TopPSampler, generate
from tfllm.models import (
    BertBackbone,
    CausalLM,
    GPTBackbone,
    GPTClassifier,
    MaskedLM,
    TextClassifier,
    TokenClassifier,
)
from tfllm.preprocessing import (
    BertPreprocessor,
    GPTClassifierPreprocessor,
    TokenClassificationPreprocessor,
)
from tfllm.tokenizers import WordPieceTokenizer, save_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "cat", "sat", "on", "mat", ".", ",", "paris", "is", "alice", "flew",
         "from", "to", "new", "york", "monday", "film", "once", "upon", "time", "be", "or",
         "not", "##s"]  # fmt: skip
VOCABULARY = SPECIALS + WORDS
LABELS = ["negative", "neutral", "positive"]
TAGS = ["O", "B-loc", "I-loc", "B-per", "I-per"]
LENGTH = 16
TEXTS = ["Alice flew from Paris to New York on Monday.", "the cat sat", ""]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@functools.cache
def load(path):
    return tf.saved_model.load(str(path))


def call(path, signature, **inputs):
    outputs = load(path).signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(VOCABULARY)


@pytest.fixture(scope="module")
def bert():
    keras.utils.set_random_seed(1)
    return BertBackbone.from_preset(
        "bert_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=LENGTH, dropout=0.0
    )


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory, tokenizer, bert):
    """A classification run folder exported by the tool with validation on, to a relative
    base path; what it printed."""
    run = tmp_path_factory.mktemp("runs") / "sentiment"
    config = RunConfig(
        task="classification", model="bert_tiny", train_files=("train.jsonl",),
        label_names=tuple(LABELS), sequence_length=LENGTH,
    )  # fmt: skip
    config.save(run / "config.json")
    save_tokenizer(tokenizer, run / "tokenizer")
    model = TextClassifier(bert, len(LABELS), dropout=0.0)
    model.save(run / "model.keras")
    base = tmp_path_factory.mktemp("exports")
    printed = io.StringIO()
    with contextlib.chdir(base.parent), contextlib.redirect_stdout(printed):
        path = tools.export.main([str(run), "--base", base.name])
    return model, base.parent / path, base, printed.getvalue()


@pytest.fixture(scope="module")
def causal_lm():
    keras.utils.set_random_seed(2)
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=32, dropout=0.0
    )
    return CausalLM(backbone)


@pytest.fixture(scope="module")
def lm_export(tmp_path_factory, tokenizer, causal_lm):
    base = tmp_path_factory.mktemp("exports")
    return export_saved_model(
        causal_lm, base, "lm", tokenizer=tokenizer, max_new_tokens=6, validate=False
    )


def test_classify_and_embed_match_the_keras_model(classifier_export, tokenizer):
    model, path, _, _ = classifier_export
    x = BertPreprocessor(tokenizer, LENGTH)(tf.constant(TEXTS))
    probabilities = softmax(keras.ops.convert_to_numpy(model(x)))
    out = call(path, "classify", text=TEXTS)
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    assert out["label_ids"].tolist() == probabilities.argmax(-1).tolist()
    assert [s.decode() for s in out["labels"]] == [LABELS[i] for i in probabilities.argmax(-1)]
    default = call(path, "serving_default", text=TEXTS)
    np.testing.assert_array_equal(default["probabilities"], out["probabilities"])

    outputs = model.backbone(x)
    sequence = keras.ops.convert_to_numpy(outputs["sequence_output"])
    mask = x["padding_mask"].numpy()[:, :, None]
    mean = (sequence * mask).sum(1) / np.maximum(mask.sum(1), 1)
    embedded = call(path, "embed", text=TEXTS)
    np.testing.assert_allclose(embedded["mean_pooled_output"], mean, atol=1e-5)
    pooled = keras.ops.convert_to_numpy(outputs["pooled_output"])
    np.testing.assert_allclose(embedded["pooled_output"], pooled, atol=1e-5)


def test_serving_layout_assets_warmup_and_saved_model_cli(classifier_export, tokenizer):
    _, path, base, _ = classifier_export
    assert path == base / "sentiment" / "1"
    assert [p.name for p in (base / "sentiment").iterdir()] == ["1"]  # no temporary left
    assert (path / "assets" / "tokenizer" / "vocab.txt").read_text().split() == VOCABULARY
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(path / saved_model.WARMUP_FILE))
    ]
    requests = {log.predict_log.request.model_spec.signature_name: log for log in logs}
    assert sorted(requests) == ["classify", "embed"]
    request = requests["classify"].predict_log.request
    assert request.model_spec.name == "sentiment"
    texts = tf.make_ndarray(request.inputs["text"]).tolist()
    assert texts == [t.encode() for t in saved_model.EXAMPLE_TEXTS]
    listing = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
         "--dir", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in ("classify", "embed", "serving_default"):
        assert f"signature_def['{name}']" in listing
    assert "DT_STRING" in listing


def test_the_tool_prints_a_plain_line_per_phase_with_seconds(classifier_export):
    _, path, base, printed = classifier_export  # exported to a relative base path
    assert "\r" not in printed and printed.splitlines()[-1] == str(path.relative_to(base.parent))
    lines = printed.splitlines()[:-1]
    phases = [re.fullmatch(r"export: (.+)  signatures 2  (\d+\.\d) s", line) for line in lines]
    assert [m[1] for m in phases] == ["traced", "written", "validated in a fresh process"]
    seconds = [float(m[2]) for m in phases]
    assert seconds == sorted(seconds) and seconds[0] > 0


def test_check_export_detects_a_difference(classifier_export, tokenizer):
    _, path, _, _ = classifier_export
    requests = {"classify": example_inputs("classify", tokenizer)}
    expected = call(path, "classify", **requests["classify"])
    expected["probabilities"] = expected["probabilities"] + 1e-4
    with pytest.raises(ValueError, match="classify.probabilities: differs"):
        check_export(path, requests, {"classify": expected})


def test_gpt_classifier_classify_and_embed_match_the_model(tmp_path, tokenizer):
    """The attached preprocessor's settings (no BOS, 8 tokens: the first text is cut) are
    the export's; `predict` logits through a float64 softmax are the reference; `embed`'s
    vectors are the backbone's at each text's last real token (which the head reads) and
    the mean over its real tokens."""
    keras.utils.set_random_seed(4)
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=LENGTH, dropout=0.0
    )
    preprocessor = GPTClassifierPreprocessor(tokenizer, 8, add_bos=False)
    model = GPTClassifier(backbone, len(LABELS), dropout=0.0, preprocessor=preprocessor)
    randomize_weights(model.output_dense, seed=5)  # a head far from zero
    path = export_saved_model(model, tmp_path, "gpt_sentiment", label_names=LABELS, validate=False)
    assert sorted(load(path).signatures) == ["classify", "embed", "serving_default"]
    out = call(path, "classify", text=TEXTS)
    logits = model.predict(TEXTS, verbose=0).astype(np.float64)
    probabilities = softmax(logits)
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    assert out["label_ids"].tolist() == probabilities.argmax(-1).tolist()
    assert [s.decode() for s in out["labels"]] == [LABELS[i] for i in probabilities.argmax(-1)]
    assert out["classes"].astype(str).tolist() == [LABELS] * len(TEXTS)
    default = call(path, "serving_default", text=TEXTS)
    np.testing.assert_array_equal(default["probabilities"], out["probabilities"])

    x = preprocessor(tf.constant(TEXTS))
    sequence = keras.ops.convert_to_numpy(backbone(x)).astype(np.float64)  # (B, T, d)
    mask = x["padding_mask"].numpy().astype(bool)
    last = np.stack([row[m][-1] for row, m in zip(sequence, mask, strict=True)])
    mean = np.stack([row[m].mean(0) for row, m in zip(sequence, mask, strict=True)])
    embedded = call(path, "embed", text=TEXTS)
    np.testing.assert_allclose(embedded["pooled_output"], last, atol=1e-5)
    np.testing.assert_allclose(embedded["mean_pooled_output"], mean, atol=1e-5)
    kernel, bias = (w.numpy() for w in model.output_dense.weights)  # the head reads it
    np.testing.assert_allclose(embedded["pooled_output"] @ kernel + bias, logits, atol=1e-4)


def test_fill_mask_top_k_matches_numpy(tmp_path, tokenizer, bert):
    model = MaskedLM(bert)
    path = export_saved_model(model, tmp_path, tokenizer=tokenizer, top_k=3, validate=False)
    out = call(path, "fill_mask", text=["the cat sat on the [MASK].", "[MASK] is paris", "a cat"])
    ids = {t: i for i, t in enumerate(VOCABULARY)}
    rows = [["the", "cat", "sat", "on", "the", "[MASK]", "."], ["[MASK]", "is", "paris"],
            ["a", "cat"]]  # fmt: skip
    token_ids = np.zeros([3, LENGTH], np.int32)
    for r, row in enumerate(rows):
        token_ids[r, : len(row) + 2] = [ids["[CLS]"]] + [ids[w] for w in row] + [ids["[SEP]"]]
    positions = np.array([[6], [1], [0]], np.int32)
    x = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
         "padding_mask": (token_ids > 0).astype(np.int32), "mask_positions": positions}  # fmt: skip
    probabilities = softmax(keras.ops.convert_to_numpy(model(x)))  # (3, 1, V)
    top = np.argsort(-probabilities, axis=-1)[..., :3]
    assert out["num_masks"].tolist() == [1, 1, 0]
    assert out["mask_positions"].tolist() == [[6], [1], [-1]]
    assert out["token_ids"][:2].tolist() == top[:2].tolist()
    assert out["tokens"][0, 0].tolist() == [VOCABULARY[i].encode() for i in top[0, 0]]
    np.testing.assert_allclose(
        out["scores"][:2], np.take_along_axis(probabilities, top, -1)[:2], atol=1e-5
    )
    assert out["tokens"][2].tolist() == [[b"", b"", b""]]


def bio_entities(words, tags):
    """conlleval chunks: `[(type, first word, last word)]`."""
    entities, previous = [], None
    for i, tag in enumerate(tags):
        kind = None if tag == "O" else tag[2:]
        if kind is not None and (tag.startswith("B-") or kind != previous):
            entities.append([kind, i, i])
        elif kind is not None:
            entities[-1][2] = i
        previous = kind
    return entities


def test_tag_matches_keras_model_and_bio_decoding(tmp_path, tokenizer, bert):
    keras.utils.set_random_seed(3)
    model = TokenClassifier(bert, len(TAGS), dropout=0.0)
    bias = np.array([0.0, 1.5, 1.5, 1.0, 1.0], np.float32)  # more entities than O
    model.output_dense.bias.assign(bias)
    path = export_saved_model(
        model, tmp_path, "ner", tokenizer=tokenizer, label_names=TAGS, validate=False
    )
    out = call(path, "tag", text=TEXTS)
    preprocessor = TokenClassificationPreprocessor(tokenizer, LENGTH, TAGS)
    for r, text in enumerate(TEXTS):
        words = text.split()
        assert out["num_words"][r] == len(words)
        if not words:
            assert out["num_entities"][r] == 0
            continue
        logits = keras.ops.convert_to_numpy(model(preprocessor(tf.constant([words]))))[0]
        pieces = [len(tokenizer.tokenize(w)) for w in words]
        first = 1 + np.cumsum([0] + pieces[:-1])
        tags = [TAGS[logits[p].argmax()] for p in first]
        assert [t.decode() for t in out["tags"][r, : len(words)]] == tags
        starts, position = [], 0
        for word in words:
            starts.append(text.index(word, position))
            position = starts[-1] + len(word)
        entities = bio_entities(words, tags)
        assert out["num_entities"][r] == len(entities) > 0
        for e, (kind, a, b) in enumerate(entities):
            begin, end = starts[a], starts[b] + len(words[b])
            assert out["entity_types"][r, e].decode() == kind
            assert (out["entity_starts"][r, e], out["entity_ends"][r, e]) == (begin, end)
            assert out["entities"][r, e].decode() == text[begin:end]


def test_generate_matches_in_process_generation(lm_export, causal_lm, tokenizer):
    prompts = ["the cat sat on", "once upon a time"]
    out = call(lm_export, "generate", text=prompts)
    assert [t.decode() for t in out["text"]] == generate(causal_lm, prompts, 6, tokenizer=tokenizer)
    # Each row samples with its own seed: as the prompt alone, whatever it is batched with.
    sampled = call(
        lm_export, "generate_with_options", text=prompts, max_new_tokens=[5],
        temperature=[0.8], top_k=[3], top_p=[1.0], seed=np.array([11, 12], np.int64),
    )  # fmt: skip
    expected = [
        generate(causal_lm, prompt, 5, TopKSampler(3, 0.8), seed=seed, tokenizer=tokenizer)
        for prompt, seed in zip(prompts, (11, 12), strict=True)
    ]
    assert [t.decode() for t in sampled["text"]] == expected
    nucleus = call(
        lm_export, "generate_with_options", text=prompts[1:], max_new_tokens=[5],
        temperature=[1.0], top_k=[0], top_p=[0.9], seed=np.array([12], np.int64),
    )  # fmt: skip
    alone = generate(causal_lm, prompts[1], 5, TopPSampler(0.9), seed=12, tokenizer=tokenizer)
    assert nucleus["text"][0].decode() == alone
    short = call(
        lm_export, "generate_with_options", text=prompts, max_new_tokens=[2, 4],
        temperature=[0.0], top_k=[0], top_p=[1.0], seed=np.array([0], np.int64),
    )  # fmt: skip
    assert short["num_tokens"].tolist() == [2, 4]
    assert short["token_ids"][0, :2].tolist() == out["token_ids"][0, :2].tolist()
    assert short["token_ids"][1].tolist() == out["token_ids"][1, :4].tolist()


def test_failed_export_leaves_nothing(tmp_path, tokenizer, bert, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saved_model, "write_warmup_requests", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(bert, tmp_path, "encoder", tokenizer=tokenizer, validate=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_before_writing(tmp_path, tokenizer, bert, lm_export):
    with pytest.raises(ValueError, match="already exists"):
        export_saved_model(bert, lm_export.parent.parent, "lm", 1, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="`version` must be a positive int"):
        export_saved_model(bert, tmp_path, "encoder", 0, tokenizer=tokenizer)
    with pytest.raises(TypeError, match="needs `tokenizer`"):
        export_saved_model(bert, tmp_path, "encoder")
    with pytest.raises(TypeError, match="Received: Dense"):
        export_saved_model(keras.layers.Dense(2), tmp_path, "dense", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="`label_names` must be 2 strings"):
        export_saved_model(
            TextClassifier(bert, 2), tmp_path, tokenizer=tokenizer, label_names=["a"]
        )
    with pytest.raises(ValueError, match="BIO labels"):
        tagger = TokenClassifier(bert, 2)
        export_saved_model(tagger, tmp_path, tokenizer=tokenizer, label_names=["O", "PER"])
    assert list(tmp_path.iterdir()) == []


def test_generate_signature_writes_prompts_as_the_task_does(tmp_path, tokenizer):
    """A CausalLM with a preprocessor (start token, chat template) exports its `generate`."""
    from tfllm.preprocessing import CausalLMPreprocessor, ChatTemplate

    keras.utils.set_random_seed(3)
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=32, dropout=0.0
    )
    template = ChatTemplate(user="{content} .", assistant="{content}")
    preprocessor = CausalLMPreprocessor(tokenizer, 16, chat_template=template)
    lm = CausalLM(backbone, preprocessor=preprocessor)
    path = export_saved_model(lm, tmp_path, "chat", max_new_tokens=6, validate=False)
    prompts = TEXTS[:2]
    out = call(path, "generate", text=prompts)
    expected = []
    for prompt in prompts:  # the prompt's tokens (start token, template) + 6 new ones
        length = int(preprocessor.generate_preprocess(prompt, 32)["padding_mask"].numpy().sum())
        expected.append(lm.generate(prompt, max_length=length + 6, strip_prompt=True))
    assert [text.decode() for text in out["text"]] == expected
