"""Preset folders: read a backbone, its tokenizer and a task from a local folder; write one.

Four formats are detected from the files a folder holds:

- `"huggingface"`: `config.json` with a `model_type` (`bert`, `gpt2`) and
  `model.safetensors` (or a sharded index); the tokenizer from `vocab.txt`,
  `vocab.json` + `merges.txt` or `tokenizer.json`.
- `"keras_hub"`: written by keras-hub's `save_to_preset` (`config.json` of a
  `keras_hub>` class, `model.weights.h5`, `tokenizer.json`, `assets/tokenizer/`).
- `"tfllm"`: written by `save_preset` (layout below).
- `"run"`: a `tools/train.py` run folder (`model.keras`, `tokenizer/`, `config.json`).

A tfllm preset folder:
```
metadata.json      {"tfllm_version", "format": "tfllm", "class_name"}
config.json        the backbone (`keras.saving.serialize_keras_object`)
model.weights.h5   the backbone's weights
assets/tokenizer/  vocabulary files + keras_tokenizer.json (`save_tokenizer`), if any
task.json          the task (its preprocessor included), when a task was saved
task.weights.h5    the task's weights outside the backbone, when it has any
```
"""

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras

from tfllm.models.backbone import Backbone
from tfllm.models.bert import BertBackbone
from tfllm.models.gpt import GPTBackbone
from tfllm.tokenizers import BytePairTokenizer, Tokenizer, WordPieceTokenizer
from tfllm.tokenizers.files import load_tokenizer, save_tokenizer

HF_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "tokenizer.json")
# What each format needs, for the error on a folder of none of them.
EXPECTED_FILES = {
    "huggingface": "config.json (with model_type) + model.safetensors or "
    "model.safetensors.index.json, and vocab.txt | vocab.json + merges.txt | tokenizer.json",
    "keras_hub": "config.json (a keras_hub> class) + model.weights.h5, and tokenizer.json + "
    "assets/tokenizer/",
    "tfllm": "metadata.json (format 'tfllm') + config.json + model.weights.h5, and "
    "assets/tokenizer/, task.json + task.weights.h5",
    "run": "model.keras, and tokenizer/ + config.json (a RunConfig)",
}


@dataclasses.dataclass(frozen=True)
class PresetParts:
    """What a preset folder holds.

    Attributes:
        format: `"huggingface"`, `"keras_hub"`, `"tfllm"`, `"run"`, or `"keras_file"`
            (a `.keras` file; its tokenizer is the `tokenizer/` folder beside it).
        backbone: the `Backbone`, with the folder's weights.
        tokenizer: the folder's tokenizer, or `None` when it has none.
        task: a task model whose `.backbone` is `backbone`, or `None`: a tfllm preset's
            or run's saved task, or the pretraining heads of a Hugging Face BERT
            (`MaskedLM`, or `BertPretrainer` with next-sentence prediction).
    """

    format: str
    backbone: Backbone
    tokenizer: Tokenizer | None
    task: keras.Model | None


def read_preset(preset, backbone_cls=None, **backbone_overrides) -> PresetParts:
    """Loads the backbone, tokenizer and task of a local preset folder of any format.

    Args:
        preset: a folder (str or `Path`) in one of the formats of this module, or a
            `.keras` file of a backbone or task (tokenizer from `tokenizer/` beside it).
        backbone_cls: when given, the folder must hold a backbone of this class.
        **backbone_overrides: backbone constructor arguments that keep the weights'
            shapes, e.g. `dropout=0.0`, `dtype="mixed_bfloat16"`.

    Example:
    >>> GPTBackbone.from_preset("gpt_tiny").save_to_preset("gpt")
    >>> parts = read_preset("gpt", dropout=0.0)
    >>> parts.format, type(parts.backbone).__name__, parts.backbone.dropout, parts.task
    ('tfllm', 'GPTBackbone', 0.0, None)
    >>> minilm = read_preset(tfllm.assets.minilm_path())  # doctest: +SKIP
    >>> minilm.format, minilm.tokenizer.lowercase  # doctest: +SKIP
    ('huggingface', True)
    """
    folder = Path(preset).expanduser()
    if folder.is_file() and folder.suffix == ".keras":  # its tokenizer/ beside it, if any
        parts = _read_model_file(folder, folder.parent / "tokenizer", backbone_overrides)
    else:
        reader = {
            "huggingface": _read_huggingface,
            "keras_hub": _read_keras_hub,
            "tfllm": _read_tfllm,
            "run": _read_run,
        }[detect_format(folder)]
        parts = reader(folder, backbone_overrides)
    if backbone_cls is not None and not isinstance(parts.backbone, backbone_cls):
        raise ValueError(
            f"`preset` {str(preset)!r} holds a {type(parts.backbone).__name__}, not a "
            f"{backbone_cls.__name__}."
        )
    return parts


def detect_format(preset) -> str:
    """The format of the preset folder `preset` (a key of `EXPECTED_FILES`)."""
    folder = Path(preset).expanduser()
    if not folder.is_dir():
        raise ValueError(f"`preset` must be an existing folder. Received: {str(preset)!r}")
    names = {p.name for p in folder.iterdir()}
    if "metadata.json" in names and _json(folder / "metadata.json").get("format") == "tfllm":
        return "tfllm"
    if "model.keras" in names:
        return "run"
    config = _json(folder / "config.json") if "config.json" in names else {}
    if str(config.get("registered_name", "")).startswith("keras_hub>"):
        return "keras_hub"
    if "model_type" in config and names & {"model.safetensors", "model.safetensors.index.json"}:
        return "huggingface"
    expected = "".join(f"\n  {name}: {files}" for name, files in EXPECTED_FILES.items())
    raise ValueError(
        f"`preset` {str(preset)!r} is not a preset folder of a known format. "
        f"Found: {sorted(names)}. Expected one of:{expected}"
    )


def with_overrides(model: keras.Model, **overrides) -> keras.Model:
    """`model` (a backbone, or a task holding one) rebuilt with backbone arguments replaced.

    The weights are copied over, so only arguments that keep their shapes may change
    (`dropout`, `dtype`, ...). Without overrides, `model` itself is returned.
    """
    if not overrides:
        return model
    config = model.get_config()
    if isinstance(model, Backbone):
        config.update(overrides)
    else:  # a task: `config["backbone"]` is the serialized backbone
        config["backbone"] = {**config["backbone"]}
        config["backbone"]["config"] = {**config["backbone"]["config"], **overrides}
    rebuilt = type(model).from_config(config)
    try:
        rebuilt.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(
            "Backbone overrides may only change settings that keep the weights' shapes "
            f"(dropout, dtype, ...). Received: {overrides}"
        ) from error
    return rebuilt


def save_preset(model: keras.Model, folder, tokenizer: Tokenizer | None = None) -> Path:
    """Writes `model` (a backbone or a task) as a tfllm preset folder, all or nothing.

    Args:
        model: a `Backbone`, or a task holding one in `.backbone`.
        folder: the preset folder; an existing one must be empty or a tfllm preset,
            which is replaced.
        tokenizer: the tokenizer to save with it; by default the task's
            `preprocessor.tokenizer`, if any.

    Example:
    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"])
    >>> backbone = BertBackbone.from_preset("bert_tiny", vocabulary_size=5)
    >>> folder = save_preset(backbone, "presets/bert", tokenizer)
    >>> read_preset(folder).tokenizer.tokenize("Hello").numpy()
    array([4], dtype=int32)
    """
    backbone = model if isinstance(model, Backbone) else getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"`model` must be a tfllm backbone or a task holding one. "
            f"Received: {type(model).__name__}"
        )
    task = None if model is backbone else model
    if tokenizer is None:
        tokenizer = getattr(getattr(task, "preprocessor", None), "tokenizer", None)
    target = Path(folder).expanduser()
    replaceable = target.is_dir() and (not any(target.iterdir()) or _is_tfllm_preset(target))
    if target.exists() and not replaceable:
        raise ValueError(
            f"`folder` {str(folder)!r} exists and is not an empty folder or a tfllm preset: "
            "it is not replaced."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _write_preset(staging, model, backbone, task, tokenizer)
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_tfllm_preset(folder: Path) -> bool:
    try:
        return detect_format(folder) == "tfllm"
    except ValueError:
        return False


def _write_preset(staging: Path, model, backbone, task, tokenizer) -> None:
    from tfllm import __version__

    metadata = {"tfllm_version": __version__, "format": "tfllm", "class_name": type(model).__name__}
    _write_json(staging / "metadata.json", metadata)
    _write_json(staging / "config.json", _serialize(backbone))
    backbone.save_weights(staging / "model.weights.h5")
    if tokenizer is not None:
        save_tokenizer(tokenizer, staging / "assets" / "tokenizer")
    if task is not None:
        _write_json(staging / "task.json", _serialize(task))
        if {id(w) for w in task.weights} - {id(w) for w in backbone.weights}:
            keras.saving.save_weights(
                task,
                staging / "task.weights.h5",
                objects_to_skip=list(backbone._flatten_layers()),
            )


def _replace_folder(staging: Path, target: Path) -> None:
    """Renames `staging` to `target`; a replaced preset is moved aside, then deleted."""
    os.chmod(staging, 0o755)  # mkdtemp makes 0700
    old = None
    if target.exists() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _serialize(obj) -> dict:
    """Keras config of `obj` without compile and build state (keras-hub does the same)."""

    def strip(config):
        if isinstance(config, dict):
            return {
                k: strip(v)
                for k, v in config.items()
                if k not in ("compile_config", "build_config")
            }
        return [strip(v) for v in config] if isinstance(config, list) else config

    return strip(keras.saving.serialize_keras_object(obj))


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Preset file {str(path)!r} is not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


# --- Readers, one per format ----------------------------------------------------------------


def _read_huggingface(folder: Path, overrides: dict) -> PresetParts:
    from tfllm.models.convert import bert_task_from_huggingface, gpt_from_huggingface

    model_type = _json(folder / "config.json")["model_type"]
    if model_type == "bert":
        backbone, task = bert_task_from_huggingface(folder, **overrides)
    elif model_type == "gpt2":
        backbone, task = gpt_from_huggingface(folder, **overrides), None
    else:
        raise ValueError(
            f"Hugging Face folder {str(folder)!r} holds a {model_type!r} model; "
            "supported model_type values: 'bert', 'gpt2'."
        )
    has_tokenizer = any((folder / name).exists() for name in HF_TOKENIZER_FILES)
    tokenizer = load_tokenizer(folder) if has_tokenizer else None
    return PresetParts("huggingface", backbone, tokenizer, task)


def _read_keras_hub(folder: Path, overrides: dict) -> PresetParts:
    import keras_hub

    source = keras_hub.models.Backbone.from_preset(str(folder))
    if isinstance(source, keras_hub.models.BertBackbone):
        backbone = BertBackbone.from_keras_hub(source)
    elif isinstance(source, keras_hub.models.GPT2Backbone):
        backbone = GPTBackbone.from_keras_hub(source)
    else:
        raise ValueError(
            f"keras-hub folder {str(folder)!r} holds a {type(source).__name__}; supported: "
            "BertBackbone, GPT2Backbone."
        )
    tokenizer = _keras_hub_tokenizer(folder)
    return PresetParts("keras_hub", with_overrides(backbone, **overrides), tokenizer, None)


def _keras_hub_tokenizer(folder: Path) -> Tokenizer | None:
    """keras-hub's `BertTokenizer` / `GPT2Tokenizer` files as a tfllm tokenizer."""
    if not (folder / "tokenizer.json").exists():
        return None
    config = _json(folder / "tokenizer.json").get("config", {})
    assets = folder / "assets" / "tokenizer"
    if (assets / "vocabulary.txt").exists():
        # keras-hub lower-cases by Unicode case folding: ids can differ beyond ASCII.
        return WordPieceTokenizer(
            assets / "vocabulary.txt",
            lowercase=config.get("lowercase", False),
            strip_accents=config.get("strip_accents", False),
            suffix_indicator=config.get("suffix_indicator", "##"),
            unknown_token=config.get("oov_token", "[UNK]"),
        )
    if (assets / "vocabulary.json").exists() and (assets / "merges.txt").exists():
        return BytePairTokenizer(
            assets / "vocabulary.json",
            assets / "merges.txt",
            special_tokens=config.get("unsplittable_tokens"),
        )
    found = sorted(p.name for p in assets.iterdir()) if assets.is_dir() else []
    raise ValueError(
        f"keras-hub folder {str(folder)!r}: assets/tokenizer/ must hold vocabulary.txt "
        f"(WordPiece) or vocabulary.json + merges.txt (byte-level BPE). Found: {found}"
    )


def _read_tfllm(folder: Path, overrides: dict) -> PresetParts:
    task = None
    if (folder / "task.json").exists():
        config = _json(folder / "task.json")
        backbone_config = config.get("config", {}).get("backbone")
        if not isinstance(backbone_config, dict) or "config" not in backbone_config:
            raise ValueError(f"{str(folder / 'task.json')!r} holds no serialized backbone.")
        backbone_config["config"].update(overrides)
        task = keras.saving.deserialize_keras_object(config)
        backbone = task.backbone
    else:
        config = _json(folder / "config.json")
        config.setdefault("config", {}).update(overrides)
        backbone = keras.saving.deserialize_keras_object(config)
    backbone.load_weights(folder / "model.weights.h5")
    if task is not None and (folder / "task.weights.h5").exists():
        keras.saving.load_weights(
            task, folder / "task.weights.h5", objects_to_skip=list(backbone._flatten_layers())
        )
    tokenizer_dir = folder / "assets" / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    return PresetParts("tfllm", backbone, tokenizer, task)


def _read_run(folder: Path, overrides: dict) -> PresetParts:
    return _read_model_file(folder / "model.keras", folder / "tokenizer", overrides, "run")


def _read_model_file(path: Path, tokenizer_dir: Path, overrides: dict, kind="keras_file"):
    model = with_overrides(keras.saving.load_model(path, compile=False), **overrides)
    backbone = model if isinstance(model, Backbone) else getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        raise ValueError(
            f"{str(path)!r} holds a {type(model).__name__}, neither a tfllm backbone nor a "
            "task holding one."
        )
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    return PresetParts(kind, backbone, tokenizer, None if model is backbone else model)
