"""SavedModels that take raw strings, in the TensorFlow Serving layout, checked after export.

`export_saved_model(run_or_model, base_path)` writes `<base>/<model_name>/<version>/`:
the SavedModel (signatures by task, see `export.signatures`), the tokenizer files in
`assets/tokenizer/`, and `assets.extra/tf_serving_warmup_requests` (one `PredictionLog`
per signature). Before the version folder appears, a fresh Python process loads the
export with `tf.saved_model.load`, calls every signature on real strings and compares
with the in-process model (identical strings and ints, floats within 1e-5), and
`saved_model_cli show --all` must list every signature. The export is written to a
hidden temporary folder beside the version folder and renamed into place, so a failed
export leaves nothing behind.

A process that loads the export needs only TensorFlow and tensorflow-text, and must
`import tensorflow_text` first (it registers the tokenizer ops).

Signatures by model: `TextClassifier` -> `classify` (default), `embed`;
`GPTClassifier` -> `classify`, `embed`; `TokenClassifier` -> `tag` (default), `embed`;
`MaskedLM` / `BertPretrainer` -> `fill_mask` (default), `embed`; `BertBackbone` ->
`embed`; `CausalLM` -> `generate` (default), `generate_with_options`.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from export import signatures
from tfllm.config import RunConfig
from tfllm.generation import get_sampler
from tfllm.io import atomic_path
from tfllm.models import (
    BertBackbone,
    BertPretrainer,
    CausalLM,
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
from tfllm.preprocessing.base import special_token_id
from tfllm.tokenizers import Tokenizer, load_tokenizer, save_tokenizer

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
TOLERANCE = 1e-5
EXAMPLE_TEXTS = [
    "A gripping, beautifully acted film.",
    "Alice flew from Paris to New York on Monday.",
]
PROMPTS = ["To be, or not to be", "Once upon a time"]


def load_run(run_dir) -> dict:
    """The task model and serving settings of a run folder written by `tools/train.py`.

    Returns:
        dict of `model`, `tokenizer`, `sequence_length`, `label_names` (`None` for
        pretraining runs) and `model_name` (the folder's name).
    """
    run = Path(run_dir)
    missing = [n for n in ("config.json", "model.keras", "tokenizer") if not (run / n).exists()]
    if missing:
        raise ValueError(f"Run folder {str(run_dir)!r} lacks {missing}.")
    config = RunConfig.load(run / "config.json")
    label_names = list(config.label_names) or None
    if config.dataset:
        from pipelines.labelled import BUILTIN  # reads the cached dataset for its labels

        label_names = list(BUILTIN[config.dataset]()[1])
    return {
        "model": keras.saving.load_model(run / "model.keras", compile=False),
        # A run continued from a checkpoint has that checkpoint's tokenizer kind.
        "tokenizer": load_tokenizer(
            run / "tokenizer", kind=None if config.init_from else config.tokenizer
        ),
        "sequence_length": config.sequence_length,
        "label_names": label_names,
        "model_name": run.resolve().name,
    }


def build_endpoints(
    model: keras.Model,
    tokenizer: Tokenizer,
    sequence_length: int,
    label_names=None,
    top_k: int = 5,
    max_new_tokens: int = 32,
    sampler="greedy",
    stop_token_ids=None,
) -> dict[str, tuple]:
    """`{signature name: (fn, input_signature)}` for `model`, the default one first."""
    if isinstance(model, CausalLM):
        context = model.backbone.max_sequence_length
        if not isinstance(max_new_tokens, int) or not 0 < max_new_tokens < context:
            raise ValueError(
                f"`max_new_tokens` must be an int in [1, {context - 1}] (the model's context "
                f"minus one). Received: {max_new_tokens!r}"
            )
        sampler = get_sampler(sampler)  # fails early on a bad identifier
        preprocessor = getattr(model, "preprocessor", None)  # start token, chat template
        if stop_token_ids is None:
            eos = getattr(preprocessor or tokenizer, "eos_token_id", None)
            stop_token_ids = () if eos is None else (eos,)
        start_id = special_token_id(tokenizer, "bos_token_id", "cls_token_id")
        return signatures.generate_endpoints(
            model, tokenizer, max_new_tokens, sampler, stop_token_ids, start_id, preprocessor
        )
    backbone = model if isinstance(model, BertBackbone) else getattr(model, "backbone", None)
    if isinstance(model, GPTClassifier):
        attached = model.preprocessor  # its BOS / EOS settings, as `predict` writes texts
        flags = {} if attached is None else dict(add_bos=attached.add_bos, add_eos=attached.add_eos)
        preprocessor = GPTClassifierPreprocessor(tokenizer, sequence_length, **flags)
    elif isinstance(backbone, BertBackbone):
        preprocessor = BertPreprocessor(tokenizer, sequence_length)
    else:
        raise TypeError(
            "`run_or_model` must be a run folder or a tfllm CausalLM, TextClassifier, "
            f"GPTClassifier, TokenClassifier, MaskedLM, BertPretrainer or BertBackbone. "
            f"Received: {type(model).__name__}"
        )
    endpoints = {}
    if isinstance(model, (TextClassifier, GPTClassifier)):
        names = _label_names(label_names, model.num_classes)
        endpoints["classify"] = signatures.classify_endpoint(model, preprocessor, names)
    elif isinstance(model, TokenClassifier):
        names = _label_names(label_names, model.num_labels)
        tagger = TokenClassificationPreprocessor(tokenizer, sequence_length, names)
        endpoints["tag"] = signatures.tag_endpoint(model, tagger)
    elif isinstance(model, (MaskedLM, BertPretrainer)):
        endpoints["fill_mask"] = signatures.fill_mask_endpoint(model, preprocessor, top_k)
    endpoints["embed"] = signatures.embed_endpoint(backbone, preprocessor)
    return endpoints


def _label_names(label_names, count: int) -> list[str]:
    names = [str(i) for i in range(count)] if label_names is None else list(label_names)
    if len(names) != count or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"`label_names` must be {count} strings (the model's classes). Received: {names!r}"
        )
    return names


def example_inputs(name: str, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Real strings (and settings) that call signature `name` in checks and warmup."""
    if name == "fill_mask":
        mask = tokenizer.vocabulary[tokenizer.mask_token_id]
        return {"text": np.array([f"The cat sat on the {mask}.", f"Paris is {mask} {mask}."])}
    if name == "generate":
        return {"text": np.array(PROMPTS)}
    if name == "generate_with_options":
        return {
            "text": np.array(PROMPTS),
            "max_new_tokens": np.array([8, 4], np.int32),
            "temperature": np.array([0.8], np.float32),
            "top_k": np.array([5], np.int32),
            "top_p": np.array([0.95], np.float32),
            "seed": np.array([1], np.int64),
        }
    return {"text": np.array(EXAMPLE_TEXTS)}


def next_version(model_dir) -> int:
    """One more than the largest integer version folder in `model_dir` (1 when none)."""
    folder = Path(model_dir)
    versions = (
        [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    )
    return max(versions, default=0) + 1


def export_saved_model(
    run_or_model,
    base_path,
    model_name: str | None = None,
    version: int | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    sequence_length: int | None = None,
    label_names=None,
    top_k: int = 5,
    max_new_tokens: int = 32,
    sampler="greedy",
    stop_token_ids=None,
    validate: bool = True,
    report=None,
) -> Path:
    """Exports a run folder or a task model as `<base_path>/<model_name>/<version>/`.

    Args:
        run_or_model: a run folder of `tools/train.py`, or a tfllm task model / backbone.
        base_path: the TensorFlow Serving model base path.
        model_name: defaults to the run folder's name, else `model.name`.
        version: positive int; defaults to the next free version.
        tokenizer: the model's tokenizer (in-memory models only); a preprocessor's
            `.tokenizer` will do. Default: that of the task's attached `preprocessor`.
        sequence_length: input length of BERT models and `GPTClassifier` (in-memory
            models; defaults to the attached preprocessor's, else
            `min(128, max_sequence_length)`).
        label_names: class / tag names of classifiers (default `"0"`, `"1"`, ...).
        top_k: tokens returned per mask by `fill_mask`.
        max_new_tokens, sampler, stop_token_ids: the settings of `generate` (as in
            `tfllm.generation.generate`; `generate_with_options` takes them per request).
        validate: reload in a fresh process and compare (strongly advised).
        report: `report(phase, seconds, **counts)`, called as each phase ends
            (`traced`, `written`, `validated in a fresh process`) with the seconds since
            the export started, e.g. `functools.partial(tfllm.progress.report_phase,
            "export")`; `None`: silent.

    Returns:
        The version folder.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "fine", "film"])
    >>> backbone = BertBackbone.from_preset("bert_tiny", vocabulary_size=7)
    >>> classifier = TextClassifier(backbone, num_classes=2)
    >>> export_saved_model(classifier, "exports", "sentiment", tokenizer=tokenizer,
    ...                    label_names=["negative", "positive"], validate=False)
    PosixPath('exports/sentiment/1')
    >>> reloaded = tf.saved_model.load("exports/sentiment/1")  # raw strings in
    >>> outputs = reloaded.signatures["classify"](text=tf.constant(["a fine film"]))
    >>> sorted(outputs)
    ['classes', 'label_ids', 'labels', 'probabilities']
    >>> outputs["classes"].numpy()
    array([[b'negative', b'positive']], dtype=object)
    >>> export_saved_model("runs/sst", "exports")  # a run folder: exports/sst/1/  # doctest: +SKIP
    """
    started = time.perf_counter()
    if isinstance(run_or_model, (str, os.PathLike)):
        if tokenizer is not None or sequence_length is not None:
            raise ValueError("A run folder brings its tokenizer and `sequence_length`.")
        run = load_run(run_or_model)
        model, tokenizer = run["model"], run["tokenizer"]
        sequence_length, model_name = run["sequence_length"], model_name or run["model_name"]
        label_names = label_names if label_names is not None else run["label_names"]
    else:
        model = run_or_model
        attached = getattr(model, "preprocessor", None)  # a task's own preprocessor
        if tokenizer is None and attached is not None:
            tokenizer = attached
            sequence_length = sequence_length or attached.sequence_length
            label_names = label_names or getattr(attached, "label_names", None)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a preprocessor's
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                "An in-memory model needs `tokenizer` (a tfllm Tokenizer or preprocessor). "
                f"Received: {type(tokenizer).__name__}"
            )
        if sequence_length is None:
            backbone = getattr(model, "backbone", model)
            sequence_length = min(128, getattr(backbone, "max_sequence_length", 128))
        model_name = model_name or model.name
    if not isinstance(model_name, str) or not model_name or "/" in model_name:
        raise ValueError(f"`model_name` must be a folder name. Received: {model_name!r}")
    model_dir = Path(base_path) / model_name
    version = next_version(model_dir) if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive int. Received: {version!r}")
    target = model_dir / str(version)
    if target.exists():
        raise ValueError(f"{str(target)!r} already exists; choose another `version`.")
    endpoints = build_endpoints(
        model, tokenizer, sequence_length, label_names, top_k, max_new_tokens, sampler,
        stop_token_ids,
    )  # fmt: skip
    created = not model_dir.exists()
    try:
        with atomic_path(target) as temp:  # a hidden name, not a version: servers skip it
            temp.mkdir()
            _write(temp, model, tokenizer, endpoints, model_name, validate, report, started)
    except BaseException:
        if created and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    return target


def _write(path: Path, model, tokenizer, endpoints, model_name, validate, report, started):
    def phase_done(phase: str) -> None:
        if report is not None:
            report(phase, time.perf_counter() - started, signatures=len(endpoints))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The tokenizer's lookup tables (BPE) must be tracked; as an unbuilt Keras layer it
    # cannot be passed to `track` itself.
    holder = tf.Module()
    holder.tokenizer = tokenizer
    archive.track(holder)
    requests, expected = {}, {}
    for name, (fn, input_signature) in endpoints.items():
        function = tf.function(fn, input_signature=input_signature, autograph=False)
        requests[name] = example_inputs(name, tokenizer)
        outputs = function(**{k: tf.constant(v) for k, v in requests[name].items()})
        expected[name] = {k: v.numpy() for k, v in outputs.items()}
        archive.add_endpoint(name, function)  # the first one is also `serving_default`
    phase_done("traced")
    archive.write_out(str(path), verbose=False)
    save_tokenizer(tokenizer, path / "assets" / "tokenizer")
    write_warmup_requests(path, model_name, requests)
    phase_done("written")
    if validate:
        check_export(path, requests, expected)
        phase_done("validated in a fresh process")


def write_warmup_requests(path, model_name: str, requests: dict) -> Path:
    """`assets.extra/tf_serving_warmup_requests`: a TFRecord of `PredictionLog`s.

    `requests` is `{signature name: {input name: array}}`; TF Serving replays each record
    when it loads the version.
    """
    file = Path(path) / WARMUP_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(file)) as writer:
        for name, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name)
            )
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return file


# Runs in a fresh interpreter with only TensorFlow and tensorflow-text: argv = export
# folder, npz of inputs and expected outputs, JSON {signature: [input names]}.
_CHECK_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

path, data, spec = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
TOLERANCE = float(sys.argv[4])
loaded = tf.saved_model.load(path)
errors = []
for name, (inputs, outputs) in spec.items():
    got = loaded.signatures[name](**{k: tf.constant(data[f"{name}.in.{k}"]) for k in inputs})
    if sorted(got) != sorted(outputs):
        errors.append(f"{name}: outputs {sorted(got)}, expected {sorted(outputs)}")
        continue
    for key in outputs:
        want, value = data[f"{name}.out.{key}"], got[key].numpy()
        if value.dtype == object:
            value = value.astype(bytes)
        if value.shape != want.shape:
            errors.append(f"{name}.{key}: shape {value.shape}, expected {want.shape}")
        elif want.dtype.kind == "f":
            diff = float(np.max(np.abs(value - want), initial=0.0))
            if not diff <= TOLERANCE:
                errors.append(f"{name}.{key}: differs by {diff}")
        elif not np.array_equal(value, want):
            errors.append(f"{name}.{key}: {value.tolist()!r} != {want.tolist()!r}")
print(json.dumps({"errors": errors, "signatures": sorted(loaded.signatures)}))
"""


def check_export(path, requests: dict, expected: dict) -> None:
    """Loads `path` in a fresh process, calls every signature and compares; `ValueError`s.

    `requests`: `{signature: {input: array}}`; `expected`: `{signature: {output: array}}`
    from the in-process model. Also requires `saved_model_cli show --all` to list every
    signature.
    """
    arrays = {}
    for name, inputs in requests.items():
        arrays.update({f"{name}.in.{k}": np.asarray(v) for k, v in inputs.items()})
        for key, value in expected[name].items():
            arrays[f"{name}.out.{key}"] = value.astype(bytes) if value.dtype == object else value
    spec = {name: [list(requests[name]), list(expected[name])] for name in requests}
    path = Path(path).resolve()  # the checks run in a scratch folder
    with tempfile.TemporaryDirectory() as scratch:
        np.savez(Path(scratch) / "check.npz", **arrays)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        cli = subprocess.Popen(
            [*command, "show", "--all", "--dir", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=scratch,
        )  # fmt: skip
        arguments = [str(path), "check.npz", json.dumps(spec), str(TOLERANCE)]
        check = subprocess.run(
            [sys.executable, "-c", _CHECK_SCRIPT, *arguments],
            capture_output=True, text=True, env=env, cwd=scratch, timeout=900,
        )  # fmt: skip
        listing, _ = cli.communicate(timeout=900)
    if check.returncode != 0:
        raise ValueError(f"The export does not load in a fresh process:\n{check.stderr[-3000:]}")
    report = json.loads(check.stdout.strip().splitlines()[-1])
    missing = sorted(set(requests) - set(report["signatures"]))
    if missing or report["errors"]:
        raise ValueError(
            f"The reloaded export differs from the in-process model: {report['errors']}"
            + (f"; missing signatures {missing}" if missing else "")
        )
    unlisted = [n for n in requests if f"signature_def['{n}']" not in listing]
    if cli.returncode != 0 or unlisted:
        raise ValueError(
            f"`saved_model_cli show --all` does not list {unlisted or 'the signatures'}:\n"
            f"{listing[-2000:]}"
        )
