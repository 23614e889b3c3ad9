"""Tasks on raw inputs: preprocessors inside `fit` / `evaluate` / `predict`, `generate`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.generation import TopKSampler, generate
from tfllm.models import (
    BertBackbone,
    BertPretrainer,
    CausalLM,
    GPTBackbone,
    MaskedLM,
    TextClassifier,
    TokenClassifier,
)
from tfllm.preprocessing import (
    BertPreprocessor,
    CausalLMPreprocessor,
    MaskedLMPreprocessor,
    TokenClassificationPreprocessor,
)
from tfllm.tokenizers import WordPieceTokenizer
from tfllm.training import AdamW

WORDS_OF_VOCABULARY = "the a film was good bad great dull plot actor paris went to on monday"
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS_OF_VOCABULARY.split(" ")]
TEXTS = ["the film was good", "a dull plot", "the actor was great", "bad film", "good plot"]
LABELS = [1, 0, 1, 0, 1]
WORDS = [["the", "actor", "went", "to", "paris"], ["on", "monday"], ["a", "film"]]
TAGS = [["O", "B-per", "O", "O", "B-loc"], ["O", "O"], ["O", "O"]]
TAG_NAMES = ["O", "B-per", "B-loc"]
LENGTH = 12


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(VOCABULARY)


def bert(seed=0):
    keras.utils.set_random_seed(seed)
    return BertBackbone.from_preset(
        "bert_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=LENGTH, dropout=0.0
    )


def gpt(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return GPTBackbone.from_preset(
        "gpt_tiny", vocabulary_size=len(VOCABULARY), max_sequence_length=32, dropout=0.0, **kwargs
    )


def twin(task):
    """The same task without a preprocessor and with the same weights."""
    config = task.get_config()
    config["preprocessor"] = None
    other = type(task).from_config(config)
    other.set_weights(task.get_weights())
    return other


def fit_both(task, raw, by_hand, **fit_kwargs):
    """One epoch on raw inputs vs the same batches preprocessed by hand: the weights after."""
    other = twin(task)
    for model in (task, other):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="auto")
    count = len(raw[0][0]) if isinstance(raw[0], tuple) else len(raw[0])
    task.fit(*raw, batch_size=count, shuffle=False, verbose=0, **fit_kwargs)  # one batch
    other.fit(by_hand, verbose=0)
    for a, b in zip(task.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def weights_changed(before, model):
    return any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_text_classifier_fit_on_strings_equals_fit_on_preprocessed(tokenizer):
    preprocessor = BertPreprocessor(tokenizer, LENGTH)
    task = TextClassifier(bert(), 2, dropout=0.0, preprocessor=preprocessor)
    before = task.get_weights()
    x, y = preprocessor(tf.constant(TEXTS), tf.constant(LABELS))
    by_hand = tf.data.Dataset.from_tensors((x, y))
    fit_both(task, (TEXTS, LABELS), by_hand)
    assert weights_changed(before, task)


def test_text_pairs_fit_and_predict(tokenizer):
    preprocessor = BertPreprocessor(tokenizer, LENGTH)
    task = TextClassifier(bert(), 2, dropout=0.0, preprocessor=preprocessor)
    first, second = TEXTS[:4], TEXTS[1:]
    x, y = preprocessor((tf.constant(first), tf.constant(second)), tf.constant(LABELS[:4]))
    by_hand = tf.data.Dataset.from_tensors((x, y))
    fit_both(task, ((first, second), LABELS[:4]), by_hand)
    logits = task.predict((first, second), batch_size=3, verbose=0)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(task(x)), atol=1e-6)


def test_token_classifier_fit_on_words_equals_fit_on_preprocessed(tokenizer):
    preprocessor = TokenClassificationPreprocessor(tokenizer, LENGTH, TAG_NAMES)
    task = TokenClassifier(bert(), 3, dropout=0.0, preprocessor=preprocessor)
    x, y, w = preprocessor(tf.ragged.constant(WORDS), tf.ragged.constant(TAGS))
    fit_both(task, (WORDS, TAGS), tf.data.Dataset.from_tensors((x, y, w)))
    logits = task.predict(WORDS, verbose=0)
    assert logits.shape == (3, LENGTH, 3)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(task(x)), atol=1e-6)


def test_masked_lm_fit_on_strings_equals_fit_on_preprocessed(tokenizer):
    # Two preprocessors with one seed draw the same masks in the same order.
    def masker():
        return MaskedLMPreprocessor(tokenizer, LENGTH, max_predictions_per_seq=3, seed=7)

    task = MaskedLM(bert(), preprocessor=masker())
    by_hand = tf.data.Dataset.from_tensors(masker()(tf.constant(TEXTS)))
    fit_both(task, (TEXTS,), by_hand)


def test_bert_pretrainer_fit_on_pairs(tokenizer):
    def masker():
        return MaskedLMPreprocessor(tokenizer, LENGTH, max_predictions_per_seq=3, seed=3)

    task = BertPretrainer(bert(), preprocessor=masker())
    first, second, labels = TEXTS[:4], TEXTS[1:], [0, 1, 1, 0]
    pairs = (tf.constant(first), tf.constant(second))
    by_hand = tf.data.Dataset.from_tensors(masker()(pairs, tf.constant(labels)))
    fit_both(task, ((first, second), labels), by_hand)


@pytest.mark.parametrize("packed", [False, True])
def test_causal_lm_fit_on_strings_equals_fit_on_preprocessed(tokenizer, packed):
    preprocessor = CausalLMPreprocessor(tokenizer, LENGTH)
    task = CausalLM(gpt(packed_sequences=packed), preprocessor=preprocessor)
    x, y, w = preprocessor(tf.constant(TEXTS))
    if packed:  # one document per row
        x = dict(x, segment_ids=x["padding_mask"])
    fit_both(task, (TEXTS,), tf.data.Dataset.from_tensors((x, y, w)))


def test_evaluate_and_validation_data_on_strings(tokenizer):
    preprocessor = BertPreprocessor(tokenizer, LENGTH)
    task = TextClassifier(bert(), 2, dropout=0.0, preprocessor=preprocessor)
    x, y = preprocessor(tf.constant(TEXTS), tf.constant(LABELS))
    plain = twin(task)
    expected = plain.evaluate(x, y, verbose=0, return_dict=True)
    got = task.evaluate(TEXTS, LABELS, batch_size=2, verbose=0, return_dict=True)
    assert got == pytest.approx(expected, abs=1e-6)
    history = task.fit(
        TEXTS, LABELS, validation_data=(TEXTS[:2], LABELS[:2]), epochs=2, verbose=0
    ).history
    assert len(history["val_loss"]) == 2
    history = task.fit(TEXTS, LABELS, validation_split=0.4, verbose=0).history
    assert set(history) >= {"loss", "val_loss", "accuracy"}


def test_fit_on_a_dataset_of_strings(tokenizer):
    preprocessor = BertPreprocessor(tokenizer, LENGTH)
    task = TextClassifier(bert(), 2, dropout=0.0, preprocessor=preprocessor)
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(2)
    other = twin(task)
    for model in (task, other):
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    task.fit(dataset, verbose=0)
    other.fit(dataset.map(preprocessor), verbose=0)
    for a, b in zip(task.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_predict_on_strings_equals_the_exported_classify_signature(tokenizer, tmp_path):
    from export.saved_model import export_saved_model

    preprocessor = BertPreprocessor(tokenizer, LENGTH)
    task = TextClassifier(bert(), 2, dropout=0.0, preprocessor=preprocessor)
    path = export_saved_model(task, tmp_path, "sentiment", validate=False)
    exported = tf.saved_model.load(str(path)).signatures["classify"](text=tf.constant(TEXTS))
    logits = task.predict(TEXTS, verbose=0)
    probabilities = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(exported["probabilities"].numpy(), probabilities, atol=1e-6)


def test_save_and_load_keep_the_preprocessor_and_the_sampler(tokenizer, tmp_path):
    classifier = TextClassifier(bert(), 2, preprocessor=BertPreprocessor(tokenizer, LENGTH))
    classifier.fit(TEXTS, LABELS, verbose=0)  # optimizer state is saved too
    classifier.save(tmp_path / "classifier.keras")
    loaded = keras.saving.load_model(tmp_path / "classifier.keras")
    assert isinstance(loaded.preprocessor, BertPreprocessor)
    np.testing.assert_array_equal(
        loaded.predict(TEXTS, verbose=0), classifier.predict(TEXTS, verbose=0)
    )
    lm = CausalLM(gpt(), preprocessor=CausalLMPreprocessor(tokenizer, LENGTH))
    lm.compile(sampler=TopKSampler(k=3))
    lm.fit(TEXTS, verbose=0)
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert isinstance(loaded.sampler, TopKSampler) and loaded.sampler.k == 3
    assert loaded.generate("the film", seed=4) == lm.generate("the film", seed=4)


def test_tasks_compile_themselves_and_leave_their_backbone_as_given(tokenizer):
    backbone = bert()
    flags = [layer.trainable for layer in backbone._flatten_layers()]
    weights = backbone.get_weights()
    task = TokenClassifier(backbone, 3, preprocessor=TokenClassificationPreprocessor(
        tokenizer, LENGTH, TAG_NAMES))  # fmt: skip
    TextClassifier(backbone, 2, pooling="mean")
    assert [layer.trainable for layer in backbone._flatten_layers()] == flags
    assert isinstance(task.optimizer, AdamW)  # compiled when built
    pooler = {id(w) for w in backbone.pooled_dense.weights}
    assert not pooler & {id(w) for w in task.trainable_weights}
    task.fit(WORDS, TAGS, verbose=0)
    np.testing.assert_array_equal(backbone.pooled_dense.get_weights()[0], weights[-2])


def test_generate_with_a_string_equals_generation_on_its_ids(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 16)
    lm = CausalLM(gpt(), preprocessor=preprocessor)
    prompts = ["the film was", "a plot"]
    ids = [[preprocessor.bos_token_id, *tokenizer.tokenize(p).numpy().tolist()] for p in prompts]
    expected = generate(lm, ids, 16 - min(map(len, ids)), stop_token_ids=())
    new = lm.generate(prompts, stop_token_ids=None, strip_prompt=True)
    assert new == [
        tokenizer.detokenize(tf.constant(e[: 16 - len(i)])).numpy().decode()
        for e, i in zip(expected, ids, strict=True)
    ]
    full = lm.generate(prompts, stop_token_ids=None)
    assert full == [f"{p} {n}" for p, n in zip(prompts, new, strict=True)]
    assert (
        lm.generate(prompts[0], max_length=8, stop_token_ids=None) == full[0].rsplit(" ", 16 - 8)[0]
    )


def test_generate_on_token_dicts_fills_each_row_to_its_width(tokenizer):
    lm = CausalLM(gpt())
    ids = np.array([[2, 5, 6, 0, 0, 0], [2, 7, 8, 9, 10, 0]], "int32")
    mask = ids > 0
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    assert out["padding_mask"].all()
    np.testing.assert_array_equal(out["token_ids"][mask], ids[mask])
    expected = generate(lm, [[2, 5, 6], [2, 7, 8, 9, 10]], 3, stop_token_ids=())
    np.testing.assert_array_equal(out["token_ids"][0, 3:], expected[0])
    np.testing.assert_array_equal(out["token_ids"][1, 5:], expected[1][:1])
    stripped = lm.generate({"token_ids": ids, "padding_mask": mask}, None, None, True)
    np.testing.assert_array_equal(stripped["padding_mask"].sum(axis=1), [3, 1])


def test_generate_fills_the_whole_context_for_prompts_of_different_lengths(tokenizer):
    lm = CausalLM(gpt())  # context 32: the longest prompt plus the shortest's room overflow it
    ids = np.zeros((2, 32), "int32")
    ids[0, :3], ids[1, :20] = [2, 5, 6], np.arange(20) % 8 + 2
    mask = ids > 0
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    assert out["padding_mask"].all()
    for row, length in enumerate((3, 20)):
        alone = generate(lm, [ids[row, :length].tolist()], 32 - length, stop_token_ids=())
        np.testing.assert_array_equal(out["token_ids"][row, length:], alone[0])


def test_generate_stops_and_uses_the_compiled_sampler(tokenizer):
    lm = CausalLM(gpt(), preprocessor=CausalLMPreprocessor(tokenizer, 16))
    ids = {"token_ids": np.zeros((1, 16), "int32"), "padding_mask": np.arange(16)[None] < 3}
    ids["token_ids"][0, :3] = [2, 5, 6]
    greedy = lm.generate(ids, stop_token_ids=None, strip_prompt=True)["token_ids"][0]
    stop = int(greedy[2])
    out = lm.generate(ids, stop_token_ids=[stop], strip_prompt=True)
    assert out["padding_mask"][0].sum() == list(greedy).index(stop) + 1
    lm.compile(sampler="beam")
    beam = lm.generate(ids, stop_token_ids=None, strip_prompt=True)["token_ids"][0]
    expected = generate(lm, [[2, 5, 6]], 13, sampler="beam", stop_token_ids=())[0]
    np.testing.assert_array_equal(beam, expected)
    full = {"token_ids": ids["token_ids"][:, :3], "padding_mask": ids["padding_mask"][:, :3]}
    same = lm.generate(full, stop_token_ids=None, sampler="random", seed=1)
    np.testing.assert_array_equal(same["token_ids"], full["token_ids"])  # no room to add


def test_errors(tokenizer):
    plain = TextClassifier(bert(), 2)
    with pytest.raises(ValueError, match="`x` holds strings.*no `preprocessor`"):
        plain.fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="`x` holds strings"):
        plain.predict(np.array(TEXTS))
    task = TextClassifier(bert(), 2, preprocessor=BertPreprocessor(tokenizer, LENGTH))
    with pytest.raises(ValueError, match="5 in `x`, 4 in `y`"):
        task.fit(TEXTS, LABELS[:4])
    with pytest.raises(ValueError, match="not a single string"):
        task.predict("one text")
    with pytest.raises(ValueError, match="leave `y` unset"):
        task.fit(tf.data.Dataset.from_tensor_slices(TEXTS).batch(2), LABELS)
    with pytest.raises(TypeError, match="must be a BertPreprocessor or None"):
        TextClassifier(bert(), 2, preprocessor=CausalLMPreprocessor(tokenizer, LENGTH))
    with pytest.raises(TypeError, match="must be a tfllm BertBackbone. Received: GPTBackbone"):
        MaskedLM(gpt())
    with pytest.raises(TypeError, match="must be a tfllm GPTBackbone"):
        CausalLM(bert())
    with pytest.raises(ValueError, match="exceeds the backbone's `max_sequence_length`"):
        TextClassifier(bert(), 2, preprocessor=BertPreprocessor(tokenizer, LENGTH + 1))
    with pytest.raises(ValueError, match="has 3 names but `num_labels` is 4"):
        TokenClassifier(
            bert(), 4, preprocessor=TokenClassificationPreprocessor(tokenizer, LENGTH, TAG_NAMES)
        )
    lm = CausalLM(gpt())
    ids = {"token_ids": np.ones((1, 3), "int32"), "padding_mask": np.ones((1, 3), bool)}
    with pytest.raises(ValueError, match='stop_token_ids="auto" needs a `preprocessor`'):
        lm.generate(ids)
    with pytest.raises(ValueError, match="String and chat `inputs` need a `preprocessor`"):
        lm.generate("the film", stop_token_ids=None)
    with pytest.raises(ValueError, match=r"`max_length` \(40\) exceeds the model's context"):
        CausalLM(gpt(), preprocessor=CausalLMPreprocessor(tokenizer, 16)).generate(
            "the", max_length=40
        )


# --- from_preset / save_to_preset ---------------------------------------------------------


def test_task_preset_round_trip_and_a_new_head(tokenizer, tmp_path):
    classifier = TextClassifier(
        bert(), 2, dropout=0.0, preprocessor=BertPreprocessor(tokenizer, LENGTH)
    )
    classifier.save_to_preset(tmp_path / "sentiment")
    loaded = TextClassifier.from_preset(tmp_path / "sentiment")
    assert isinstance(loaded.preprocessor, BertPreprocessor)
    np.testing.assert_array_equal(
        loaded.predict(TEXTS, verbose=0), classifier.predict(TEXTS, verbose=0)
    )
    # Head arguments: the same backbone and preprocessor settings, a new head.
    three = TextClassifier.from_preset(tmp_path / "sentiment", num_classes=3, sequence_length=8)
    assert three.num_classes == 3 and three.preprocessor.sequence_length == 8
    for a, b in zip(three.backbone.get_weights(), classifier.backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    tagger = TokenClassifier.from_preset(tmp_path / "sentiment", label_names=TAG_NAMES)
    assert tagger.num_labels == 3 and tagger.preprocessor.label_names == TAG_NAMES
    assert tagger.fit(WORDS, TAGS, verbose=0).history["loss"]


def test_masked_lm_from_preset_takes_or_creates_the_head(tmp_path, caplog):
    from tests.test_presets import hf_bert_with_heads, mlm_inputs

    with_head = hf_bert_with_heads(tmp_path / "with", nsp=False)
    from tfllm.models.preset_io import read_preset

    converted = read_preset(with_head).task  # the checkpoint's MaskedLM
    model = MaskedLM.from_preset(with_head, sequence_length=10)
    x = mlm_inputs()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(converted(x)), atol=1e-6
    )
    pretrainer = BertPretrainer.from_preset(with_head)  # MLM head taken, NSP head created
    np.testing.assert_array_equal(
        pretrainer.mlm_head.get_weights()[-1], converted.mlm_head.get_weights()[-1]
    )
    assert "no nsp_head weights" in caplog.text
    caplog.clear()
    bare = tmp_path / "bare"
    TextClassifier(bert(), 2).backbone.save_to_preset(bare)
    assert MaskedLM.from_preset(bare).preprocessor is None  # a backbone alone: no tokenizer
    assert "no mlm_head weights" in caplog.text


def test_causal_lm_from_a_gpt2_folder_generates_text(tmp_path):
    import json

    import keras_hub

    from tests.test_convert import hf_gpt2_folder, randomize
    from tfllm import assets

    vocab = assets.gpt2_vocabulary_path()
    source = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=64,
        max_sequence_length=64,
    )  # fmt: skip
    folder = hf_gpt2_folder(tmp_path / "gpt2", randomize(source))
    (folder / "vocab.json").write_text((vocab / "gpt2_vocab.json").read_text())
    (folder / "merges.txt").write_text((vocab / "gpt2_merges.txt").read_text())
    lm = CausalLM.from_preset(folder)
    assert (
        lm.preprocessor.eos_token_id
        == json.loads((folder / "vocab.json").read_text())["<|endoftext|>"]
    )
    text = lm.generate("To be, or not to be", max_length=16)
    assert text.startswith("To be, or not to be")
    tokenizer = lm.preprocessor.tokenizer
    ids = [[lm.preprocessor.bos_token_id, *tokenizer.tokenize("To be, or not to be").numpy()]]
    new = generate(lm, ids, 16 - len(ids[0]), tokenizer=tokenizer)
    keep = [t for t in new[0] if t != lm.preprocessor.eos_token_id]
    expected = "To be, or not to be" + tokenizer.detokenize(tf.constant(keep)).numpy().decode()
    assert text == expected


def test_from_preset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"one of \['bert_base_random', 'bert_bench'"):
        TextClassifier.from_preset("bert_base_en", num_classes=2)
    GPTBackbone.from_preset("gpt_tiny").save_to_preset(tmp_path / "gpt")
    with pytest.raises(ValueError, match="holds a GPTBackbone, not a BertBackbone"):
        TextClassifier.from_preset(tmp_path / "gpt", num_classes=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Found: \\[\\]"):
        CausalLM.from_preset(tmp_path / "empty")


def test_from_preset_keeps_the_saved_preprocessor_settings(tokenizer, tmp_path):
    from tfllm.preprocessing import ChatTemplate

    template = ChatTemplate(user="Q: {content}\n", assistant="A: {content}")
    lm = CausalLM(gpt(), preprocessor=CausalLMPreprocessor(tokenizer, 16, chat_template=template))
    lm.save_to_preset(tmp_path / "chat")
    longer = CausalLM.from_preset(tmp_path / "chat", sequence_length=24)  # a new preprocessor
    assert longer.preprocessor.sequence_length == 24
    assert longer.preprocessor.chat_template.get_config() == template.get_config()


@pytest.mark.assets
@pytest.mark.slow
def test_minilm_classifier_from_its_folder_fits_on_strings():
    from tfllm import assets

    classifier = TextClassifier.from_preset(
        assets.minilm_path(), num_classes=2, pooling="mean", sequence_length=16
    )
    reference = BertBackbone.from_huggingface(assets.minilm_path())
    for a, b in zip(classifier.backbone.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert classifier.preprocessor.tokenizer.lowercase
    history = classifier.fit(x=TEXTS, y=LABELS, batch_size=5, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert classifier.predict(["an instant classic"], verbose=0).shape == (1, 2)
