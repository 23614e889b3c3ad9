"""A toy SavedModel for the serving tests: string-input signatures (a tf-text tokenizer
and a little arithmetic) whose answers numpy gives, in TF Serving's version layout."""

import os

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

SENTENCES = ["a fine film", "one two three four five six", "héllo wörld ünïcode", ""]
LABELS = ["short", "long"]


def write_toy_model(base, version: int, scale: float) -> None:
    """Writes version `version` of a toy model whose answers depend on `scale`."""
    module = tf.Module()
    module.scale = tf.Variable(scale)
    tokenizer, names = tf_text.WhitespaceTokenizer(), tf.constant(LABELS)
    text_spec = tf.TensorSpec([None], tf.string, name="text")

    @tf.function(input_signature=[text_spec])
    def classify(text):
        words = tf.cast(tokenizer.tokenize(text).row_lengths(), tf.float32)
        logits = tf.stack([module.scale * (3.0 - words), module.scale * (words - 3.0)], axis=1)
        probabilities = tf.nn.softmax(logits)
        ids = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return {"label_ids": ids, "labels": tf.gather(names, ids), "probabilities": probabilities}

    @tf.function(
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")] * 1
        + [tf.TensorSpec([None], tf.int32, name="k")]
    )
    def scale_rows(x, k):
        return {"y": x * tf.cast(k, tf.float32)[:, None] * module.scale}

    @tf.function(input_signature=[text_spec])
    def echo(text):
        return {
            "upper_bytes": tf.strings.upper(text),
            "rows": tf.fill(tf.shape(text), tf.shape(text)[0]),
        }

    @tf.function(input_signature=[text_spec])
    def count(text):
        return {"words": tf.cast(tokenizer.tokenize(text).row_lengths(), tf.float32)}

    signatures = {
        "serving_default": classify,
        "classify": classify,
        "scale": scale_rows,
        "echo": echo,
        "count": count,
    }
    temporary = os.path.join(base, f".tmp-{version}")
    tf.saved_model.save(module, temporary, signatures=signatures)
    os.replace(temporary, os.path.join(base, str(version)))  # versions appear whole


def expected_probabilities(texts, scale):
    """Numpy answer of `classify`: a softmax over `scale * ±(words - 3)`."""
    words = np.array([len(t.split()) for t in texts], np.float64)
    logits = scale * np.stack([3.0 - words, words - 3.0], axis=1)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)
