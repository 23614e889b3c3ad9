"""`GPTClassifier` and `GPTClassifierPreprocessor`: pooling checked against numpy, raw
texts in `fit` / `predict`, save / load, presets, LoRA and errors."""

import keras
import numpy as np
import pytest

from tests.helpers import numpy, randomize_weights, weights_of
from tfllm.models import BertBackbone, GPTBackbone, GPTClassifier
from tfllm.preprocessing import CausalLMPreprocessor, GPTClassifierPreprocessor
from tfllm.tokenizers import WordPieceTokenizer

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "was", "good", "bad", "plot"]
# Lengths 6, 4, 3 and 8 (cut) after BOS / EOS: rows padded differently.
TEXTS = ["the film was good", "bad plot", "good", "the plot was bad the film was bad"]
LABELS = [1, 0, 1, 0]
LENGTH = 8


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(VOCABULARY)


def gpt(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=16, dropout=0.0, **kwargs
    )


def classifier(tokenizer, pooling="last", **kwargs):
    model = GPTClassifier(
        gpt(**kwargs),
        3,
        pooling=pooling,
        dropout=0.0,
        preprocessor=GPTClassifierPreprocessor(tokenizer, LENGTH),
    )
    randomize_weights(model.output_dense, seed=1)  # a head far from zero
    return model


def test_preprocessor_ids_by_hand(tokenizer):
    preprocessor = GPTClassifierPreprocessor(tokenizer, LENGTH)
    x, y = preprocessor(TEXTS, np.array(LABELS))
    assert x["token_ids"].numpy().tolist() == [
        [2, 4, 5, 6, 7, 3, 0, 0],
        [2, 8, 9, 3, 0, 0, 0, 0],
        [2, 7, 3, 0, 0, 0, 0, 0],
        [2, 4, 9, 6, 8, 4, 5, 3],  # cut at the end, EOS kept
    ]
    assert x["padding_mask"].numpy().sum(axis=1).tolist() == [6, 4, 3, 8]
    assert np.asarray(y).tolist() == LABELS  # passed through
    plain = GPTClassifierPreprocessor(tokenizer, 4, add_bos=False, add_eos=False)
    assert plain("the film was good bad")["token_ids"].numpy().tolist() == [4, 5, 6, 7]
    rebuilt = GPTClassifierPreprocessor.from_config(plain.get_config())
    assert (rebuilt.sequence_length, rebuilt.add_bos, rebuilt.add_eos) == (4, False, False)


@pytest.mark.parametrize(
    "pooling, packed", [("last", False), ("last", True), ("mean", False)], ids=str
)
def test_logits_equal_a_numpy_head_on_each_text_alone(tokenizer, pooling, packed):
    model = classifier(tokenizer, pooling, packed_sequences=packed)
    logits = model.predict(TEXTS, verbose=0)
    x = model.preprocessor(TEXTS)
    kernel, bias = weights_of(model.output_dense)
    for row, length in enumerate(x["padding_mask"].numpy().sum(axis=1)):
        # The backbone on the row's real tokens only, without padding.
        alone = {"token_ids": x["token_ids"].numpy()[row : row + 1, :length]}
        alone["padding_mask"] = np.ones((1, length), "int32")
        if packed:
            alone["segment_ids"] = alone["padding_mask"]
        sequence = numpy(model.backbone(alone))[0]  # (n, d)
        pooled = sequence[-1] if pooling == "last" else sequence.mean(axis=0)
        np.testing.assert_allclose(logits[row], pooled @ kernel + bias, atol=2e-5, rtol=0)


def test_save_load_config_and_preset_round_trips(tokenizer, tmp_path):
    model = classifier(tokenizer, pooling="mean")
    expected = model.predict(TEXTS, verbose=0)
    model.save(tmp_path / "classifier.keras")
    loaded = keras.saving.load_model(tmp_path / "classifier.keras")
    assert isinstance(loaded, GPTClassifier) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.predict(TEXTS, verbose=0), expected)
    model.save_to_preset(tmp_path / "preset")
    same = GPTClassifier.from_preset(tmp_path / "preset")
    assert (same.num_classes, same.pooling) == (3, "mean")
    np.testing.assert_array_equal(same.predict(TEXTS, verbose=0), expected)
    # Head arguments: the backbone and preprocessor of the preset, a new head.
    two = GPTClassifier.from_preset(tmp_path / "preset", num_classes=2, sequence_length=6)
    assert two.pooling == "last" and two.preprocessor.sequence_length == 6
    for a, b in zip(two.backbone.get_weights(), model.backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_on_texts_and_lora_trains_the_adapters_and_the_head_only(tokenizer):
    model = classifier(tokenizer)
    model.compile(optimizer=keras.optimizers.SGD(0.1))  # no weight decay: moved = a gradient
    before = model.get_weights()
    history = model.fit(TEXTS, LABELS, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    after = model.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    lora = classifier(tokenizer)
    lora.backbone.enable_lora(2)
    lora.compile(optimizer=keras.optimizers.SGD(0.1))
    base = {v.path: v.numpy().copy() for v in lora.weights}
    lora.fit(TEXTS, LABELS, batch_size=4, verbose=0)
    moved = {v.path for v in lora.weights if not np.array_equal(base[v.path], v.numpy())}
    assert moved and all("lora_kernel" in path or path.startswith("logits/") for path in moved)
    assert {"logits/kernel", "logits/bias"} <= moved


def test_errors(tokenizer):
    with pytest.raises(ValueError, match="`pooling` must be 'last' or 'mean'. Received: 'cls'"):
        GPTClassifier(gpt(), 2, pooling="cls")
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 2. Received: 1"):
        GPTClassifier(gpt(), 1)
    with pytest.raises(TypeError, match="must be a tfllm GPTBackbone. Received: BertBackbone"):
        GPTClassifier(BertBackbone.from_preset("bert_tiny"), 2)
    with pytest.raises(TypeError, match="must be a GPTClassifierPreprocessor or None"):
        GPTClassifier(gpt(), 2, preprocessor=CausalLMPreprocessor(tokenizer, LENGTH))
    with pytest.raises(ValueError, match="exceeds the backbone's `max_sequence_length`"):
        GPTClassifier(gpt(), 2, preprocessor=GPTClassifierPreprocessor(tokenizer, 17))
    with pytest.raises(ValueError, match="`sequence_length` must leave room.*Received: 2"):
        GPTClassifierPreprocessor(tokenizer, 2)
    with pytest.raises(ValueError, match="`x` of a `GPTClassifierPreprocessor` must be texts"):
        GPTClassifierPreprocessor(tokenizer, LENGTH)((TEXTS, TEXTS))
    with pytest.raises(ValueError, match="`x` holds strings.*no `preprocessor`"):
        GPTClassifier(gpt(), 2).fit(TEXTS, LABELS)
