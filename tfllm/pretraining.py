"""A whole pretraining run from a `RunConfig`: tokenizer, data, model, training, outputs.

Supervised fine-tuning of a causal LM (`task="causal_lm_sft"`) runs the same way, on
prompt / response or chat examples (`pipelines.sft`) from its `init_from` model; its
`model.keras` holds the preprocessor with the run's chat template, so it answers raw
prompts (`generate`).

`runs/<name>/` receives `config.json`, `train_files.json` (the files it matched),
`tokenizer/` (vocabulary files), `checkpoints/`, `logs/` (TensorBoard), `history.json`,
`curves.png` and `model.keras`. Rerunning a config resumes its run (`check_resume`).
"""

import json
from pathlib import Path

import keras
import tensorflow as tf

from pipelines.datasets import expand_files, pretraining_dataset_fn, read_documents
from pipelines.sft import read_sft_files, sft_dataset_fn
from tfllm import assets, benchmarking
from tfllm.config import SFT_TASK, RunConfig
from tfllm.io import atomic_path, atomic_write
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.metrics import Perplexity
from tfllm.models import PRESETS, BertBackbone, BertPretrainer, CausalLM, GPTBackbone, MaskedLM
from tfllm.models.preset_io import PresetParts, read_preset, with_overrides
from tfllm.plots import plot_history
from tfllm.preprocessing import CausalLMPreprocessor, MaskedLMPreprocessor
from tfllm.tokenizers import (
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
    train_sentencepiece,
    train_wordpiece,
)
from tfllm.trainer import Trainer
from tfllm.training import make_optimizer, make_strategy

TRAINERS = {"wordpiece": train_wordpiece, "bpe": train_bpe, "sentencepiece": train_sentencepiece}
# What a resumed run may change: its length, how often it writes, what it validates on.
RESUMABLE_FIELDS = (
    "steps",
    "log_every",
    "checkpoint_every",
    "validation_files",
    "validation_steps",
    "name",
    "output_dir",
    "tf_data_service",
    "search_space",
)


def build_tokenizer(config: RunConfig, files: list[str], start=None) -> Tokenizer:
    """`config.tokenizer_path`'s tokenizer, else the starting point's (`init_from`), else a
    `config.tokenizer` vocabulary trained on `files`."""
    if config.tokenizer_path:
        return load_tokenizer(config.tokenizer_path, kind=config.tokenizer)
    if start is not None:
        if start.tokenizer is None:
            raise ValueError(
                f"`init_from` {config.init_from!r} has no tokenizer: set `tokenizer_path`."
            )
        return start.tokenizer
    texts = (t.decode() for t in read_documents(files, config.data_format).as_numpy_iterator())
    source = [Path(f) for f in files] if config.data_format == "text" else texts
    return TRAINERS[config.tokenizer](source, config.vocabulary_size)


def build_preprocessor(config: RunConfig, tokenizer: Tokenizer):
    if config.task == "causal_lm":
        return CausalLMPreprocessor(tokenizer, config.sequence_length)
    if config.task == SFT_TASK:
        return CausalLMPreprocessor(
            tokenizer, config.sequence_length, chat_template=config.chat_template
        )
    return MaskedLMPreprocessor(tokenizer, config.sequence_length, seed=config.seed)


def read_starting_point(config: RunConfig) -> PresetParts:
    """The pretrained backbone (and heads, tokenizer) that `config.init_from` names."""
    wanted = GPTBackbone if config.task in ("causal_lm", SFT_TASK) else BertBackbone
    if not Path(config.init_from).expanduser().exists():
        raise ValueError(f"`init_from` {config.init_from!r} does not exist.")
    parts = read_preset(config.init_from)
    if not isinstance(parts.backbone, wanted):
        raise ValueError(
            f"`init_from` {config.init_from!r} holds a {type(parts.backbone).__name__}; "
            f"`task={config.task}` needs a {wanted.__name__}."
        )
    return parts


def continued_model(config: RunConfig, start: PresetParts) -> keras.Model:
    """The task of `config` on `start`'s backbone, its pretrained heads where it has them.

    `model_overrides` may change only settings that keep the weights' shapes (dropout);
    the compute dtype follows `precision`.
    """
    overrides = {**config.model_overrides, "dtype": config.precision}
    if config.task in ("causal_lm", SFT_TASK):
        overrides["packed_sequences"] = config.packed  # True unless SFT says otherwise
    backbone = with_overrides(start.backbone, **overrides)
    classes = {"causal_lm": CausalLM, SFT_TASK: CausalLM, "masked_lm": MaskedLM}
    task_class = classes.get(config.task, BertPretrainer)
    model = task_class(backbone)
    model.adopt_heads(start.task, config.init_from)
    return model


def build_model(config: RunConfig, vocabulary_size: int, start=None) -> keras.Model:
    """The task model of `config` (call inside `strategy.scope()`), compiled.

    `start`: the `PresetParts` of `config.init_from` (continued pretraining), else a new
    model of the `model` preset with `vocabulary_size` tokens.
    """
    if start is not None:
        model = continued_model(config, start)
        if config.lora_rank:
            model.backbone.enable_lora(config.lora_rank)
        return _compile(config, model)
    if config.model not in PRESETS:
        raise ValueError(f"`model` must be one of {sorted(PRESETS)}. Received: {config.model!r}")
    preset = PRESETS[config.model]
    wants = "gpt" if config.task == "causal_lm" else "bert"
    if preset["backbone"] != wants:
        raise ValueError(f"`task={config.task}` needs a {wants} preset. Received: {config.model!r}")
    kwargs = {**preset["config"], **config.model_overrides, "vocabulary_size": vocabulary_size}
    if config.sequence_length > kwargs.get("max_sequence_length", config.sequence_length):
        raise ValueError(
            f"`sequence_length` ({config.sequence_length}) exceeds the model's "
            f"`max_sequence_length` ({kwargs['max_sequence_length']})."
        )
    if config.task == "causal_lm":
        model = CausalLM(GPTBackbone(**kwargs, packed_sequences=True))
    elif config.task == "masked_lm":
        model = MaskedLM(BertBackbone(**kwargs))
    else:
        model = BertPretrainer(BertBackbone(**kwargs))
    return _compile(config, model)


def _compile(config: RunConfig, model: keras.Model) -> keras.Model:
    # SFT: the mean over response tokens, whatever share of each batch the prompts take
    # (`CausalLM`'s own loss, also that of `fit` in Python).
    loss = model.default_loss() if config.task == SFT_TASK else SparseCategoricalCrossentropy()
    metrics = [Perplexity(), keras.metrics.SparseCategoricalAccuracy("accuracy")]
    if config.task == "bert_pretraining":
        nsp = [keras.metrics.SparseCategoricalAccuracy("accuracy")]
        model.compile(
            optimizer=make_optimizer(config),
            loss={"mlm": loss, "nsp": loss},
            weighted_metrics={"mlm": metrics, "nsp": nsp},
        )
    else:
        model.compile(optimizer=make_optimizer(config), loss=loss, weighted_metrics=metrics)
    return model


def default_corpus() -> tuple[list[str], list[str]]:
    """The built-in corpus: Shakespeare's plays; three tragedies are held out."""
    plays = sorted(str(p) for p in assets.shakespeare_path().glob("*/*.md"))
    held_out = [p for p in plays if Path(p).stem in ("hamlet", "macbeth", "othello")]
    return [p for p in plays if p not in held_out], held_out


def check_resume(config: RunConfig, files: list[str]) -> None:
    """Fails if `config.run_dir` holds a run of other settings or other training files.

    A rerun resumes from the folder's last checkpoint (weights, optimizer, input
    position); other data settings would silently land it on other data. Only
    `RESUMABLE_FIELDS` may differ (a new `steps` also stretches the learning-rate
    schedule to the new length).
    """
    saved_config, saved_files = config.run_dir / "config.json", config.run_dir / "train_files.json"
    if not saved_config.is_file():
        return
    saved = RunConfig.load(saved_config).to_dict()
    changed = {
        name: (saved[name], value)
        for name, value in config.to_dict().items()
        if name not in RESUMABLE_FIELDS and saved[name] != value
    }
    before = json.loads(saved_files.read_text()) if saved_files.is_file() else files
    if before != files:
        changed["train_files matched"] = (
            [f for f in before if f not in files],
            [f for f in files if f not in before],
        )
    if changed:
        details = "; ".join(f"{name}: {a!r} -> {b!r}" for name, (a, b) in changed.items())
        raise ValueError(
            f"{str(config.run_dir)!r} holds a run with other settings ({details}); resuming "
            f"it would train on other data. A resume may change only {list(RESUMABLE_FIELDS)}:"
            " set them back, or give the new run another `name`."
        )


def pretrain(config: RunConfig, verbose: bool = True) -> dict:
    """Runs (or resumes) the pretraining (or SFT) of `config`; returns a summary dict.

    Without `train_files` the built-in corpus is used (`default_corpus`).
    """
    if config.train_files:
        files = expand_files(config.train_files, "train_files")
        validation_files = (
            expand_files(config.validation_files, "validation_files")
            if config.validation_files
            else []
        )
    else:
        files, validation_files = default_corpus()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _pretrain(config, files, validation_files, verbose)
    finally:
        keras.config.set_dtype_policy(previous)


def _pretrain(config: RunConfig, files: list, validation_files: list, verbose: bool) -> dict:
    strategy = make_strategy(config.strategy)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"`batch_size` ({config.batch_size}) must be divisible by the "
            f"{strategy.num_replicas_in_sync} replicas."
        )
    run_dir = config.run_dir
    check_resume(config, files)
    config.save(run_dir / "config.json")
    atomic_write(run_dir / "train_files.json", json.dumps(files, indent=1))
    tokenizer_dir = run_dir / "tokenizer"
    start = read_starting_point(config) if config.init_from else None
    if tokenizer_dir.is_dir():  # a resumed run keeps its vocabulary
        # A checkpoint's tokenizer may be of another kind than `config.tokenizer`.
        tokenizer = load_tokenizer(
            tokenizer_dir, kind=None if config.init_from else config.tokenizer
        )
    else:
        tokenizer = build_tokenizer(config, files, start)
        save_tokenizer(tokenizer, tokenizer_dir)
    if start is not None and tokenizer.vocabulary_size() > start.backbone.vocabulary_size:
        raise ValueError(
            f"The tokenizer has {tokenizer.vocabulary_size()} tokens but `init_from`'s "
            f"backbone only {start.backbone.vocabulary_size} embeddings."
        )
    preprocessor = build_preprocessor(config, tokenizer)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, tokenizer.vocabulary_size(), start)
    tokens_per_batch = config.batch_size * config.sequence_length
    # A masked LM's head runs at its `max_predictions_per_seq` positions only.
    predicted = getattr(preprocessor, "max_predictions_per_seq", None)
    flops = benchmarking.flops_per_token(model.backbone, config.sequence_length, predicted)
    # MFU against the peak of the run's compute dtype (bfloat16 peaks well above float32).
    peak = benchmarking.peak_flops(keras.config.dtype_policy().compute_dtype)
    trainer = Trainer(
        model,
        strategy,
        run_dir,
        steps=config.steps,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        tokens_per_batch=tokens_per_batch,
        flops_per_token=flops,
        peak_flops=peak,
        verbose=verbose,
    )
    # Its own preprocessor: validation must not draw from the training masks' generator.
    validation = (
        run_dataset_fn(
            config, build_preprocessor(config, tokenizer), validation_files, training=False
        )
        if validation_files
        else None
    )
    history = trainer.fit(
        run_dataset_fn(config, preprocessor, files),
        validation_data=validation,
        validation_steps=config.validation_steps,
    )
    if trainer.is_chief:
        # Saved with its preprocessor, so the loaded task takes raw text (`generate`, `fit`).
        model.preprocessor = preprocessor
        if config.lora_rank:  # the adapters alone, then merged: no extra cost in exports
            model.backbone.save_lora_weights(run_dir / "adapters.lora.h5")
            model.backbone.merge_lora()
            _compile(config, model)  # an optimizer of the merged model's variables
        with atomic_path(run_dir / "model.keras") as temp:
            model.save(temp)
        if history["step"]:
            plot_history(history, run_dir / "curves.png")
    last = {k: v[-1] for k, v in history.items() if v}
    return {"run_dir": str(run_dir), "replicas": strategy.num_replicas_in_sync, **last}


def run_dataset_fn(config: RunConfig, preprocessor, files: list, training: bool = True):
    """The run's `InputContext -> Dataset`: documents, or SFT examples (read and checked
    here, before training starts)."""
    if config.task == SFT_TASK:
        return sft_dataset_fn(config, preprocessor, read_sft_files(files), training)
    return pretraining_dataset_fn(config, preprocessor, files, training)


def tf_data_service_servers() -> tuple[str, list]:
    """An in-process tf.data service (dispatcher + one worker); returns its address.

    For trying `tf_data_service` on one machine; on a cluster, start
    `tf.data.experimental.service.DispatchServer` and `WorkerServer`s on their own hosts.
    """
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address)
    )
    return dispatcher.target, [dispatcher, worker]
