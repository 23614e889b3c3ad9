"""Preset folders: Hugging Face, keras-hub (written by keras-hub), tfllm presets, run folders.

Hugging Face BERT heads are checked against a float64 numpy forward pass; keras-hub folders
against keras-hub's own models and tokenizers; tokenizer.json against the vocabulary files
and Hugging Face `tokenizers`.
"""

import json
import math

import keras
import keras_hub
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import Unigram

from tests.test_convert import (
    TINY,
    bert_inputs,
    hf_bert_folder,
    hf_gpt2_folder,
    keras_hub_bert,
    max_diff,
    numpy_bert,
    randomize,
    right_padded,
)
from tfllm import assets
from tfllm.config import RunConfig
from tfllm.models import (
    PRESETS,
    BertBackbone,
    BertPretrainer,
    GPTBackbone,
    MaskedLM,
    TextClassifier,
)
from tfllm.models.preset_io import read_preset, save_preset, with_overrides
from tfllm.tokenizers import (
    BytePairTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    save_tokenizer,
)
from tfllm.tokenizers.byte_pair import bytes_to_unicode

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "The"]
WORDS += ["##es", "jump", "##s", "over", "lazy", "dog", ".", "!", "a"]
TEXTS = ["The quick brown foxes jump over the lazy dog.", "THE FOX jumps!", "a dogs", ""]
MERGES = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "hell o"]
BPE_TEXTS = ["hello world", " hello  world<|endoftext|>hello", "héllo wörld!", ""]


def byte_level_vocabulary() -> dict[str, int]:
    vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for merge in MERGES:
        vocabulary["".join(merge.split())] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return vocabulary


def write_byte_level_tokenizer(folder):
    """`byte_level_vocabulary()` and `MERGES` as Hugging Face `vocab.json` + `merges.txt`."""
    (folder / "vocab.json").write_text(json.dumps(byte_level_vocabulary()))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def ids(tokenizer, texts) -> list[list[int]]:
    return [list(map(int, row)) for row in tokenizer.tokenize(texts).to_list()]


def mlm_inputs():
    inputs = bert_inputs(*right_padded())  # rows of length 10, 7 and 4
    inputs["mask_positions"] = np.array([[1, 3], [2, 6], [0, 3]], "int32")
    return inputs


def assert_same_outputs(got, want):
    for a, b in zip(keras.tree.flatten(got), keras.tree.flatten(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- Hugging Face folders ---------------------------------------------------------------------


def hf_bert_with_heads(folder, nsp: bool, tied_decoder: bool = True):
    """A tiny HF BERT folder plus `cls.predictions.*` (and `cls.seq_relationship.*`)."""
    hf_bert_folder(folder, keras_hub_bert())
    weights = load_file(folder / "model.safetensors")
    rng = np.random.default_rng(1)
    d, v = TINY["hidden_dim"], TINY["vocabulary_size"]
    p = "cls.predictions"
    heads = {
        f"{p}.transform.dense.weight": rng.normal(0, 0.2, (d, d)),
        f"{p}.transform.dense.bias": rng.normal(0, 0.2, d),
        f"{p}.transform.LayerNorm.weight": 1 + rng.normal(0, 0.1, d),
        f"{p}.transform.LayerNorm.bias": rng.normal(0, 0.2, d),
        f"{p}.bias": rng.normal(0, 0.2, v),
        f"{p}.decoder.weight": weights["embeddings.word_embeddings.weight"]
        + (0 if tied_decoder else 1),
    }
    if nsp:
        heads["cls.seq_relationship.weight"] = rng.normal(0, 0.2, (2, d))
        heads["cls.seq_relationship.bias"] = rng.normal(0, 0.2, 2)
    weights.update({k: np.asarray(x, "float32") for k, x in heads.items()})
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return folder


def numpy_heads(folder, inputs):
    """float64 BERT masked-LM logits `(B, P, V)` and NSP logits `(B, 2)` (exact GELU)."""
    config = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    w = {k: v.astype("float64") for k, v in weights.items()}
    backbone_inputs = {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    sequence, pooled = numpy_bert(weights, config, **backbone_inputs)
    rows = np.take_along_axis(sequence, inputs["mask_positions"][:, :, None], axis=1)
    p = "cls.predictions.transform"
    h = rows @ w[f"{p}.dense.weight"].T + w[f"{p}.dense.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12)
    h = h * w[f"{p}.LayerNorm.weight"] + w[f"{p}.LayerNorm.bias"]
    mlm = h @ w["embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
    nsp = None
    if "cls.seq_relationship.weight" in w:
        nsp = pooled @ w["cls.seq_relationship.weight"].T + w["cls.seq_relationship.bias"]
    return mlm, nsp


def test_huggingface_bert_without_heads(tmp_path):
    folder = hf_bert_folder(tmp_path / "bert", keras_hub_bert())
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    parts = read_preset(folder)
    assert (parts.format, parts.task) == ("huggingface", None)
    inputs = bert_inputs(*right_padded())
    assert_same_outputs(parts.backbone(inputs), BertBackbone.from_huggingface(folder)(inputs))
    assert isinstance(parts.tokenizer, WordPieceTokenizer) and parts.tokenizer.lowercase


def test_huggingface_bert_masked_lm_head_equals_numpy(tmp_path):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=False)
    parts = read_preset(folder)
    assert isinstance(parts.task, MaskedLM) and parts.task.backbone is parts.backbone
    inputs = mlm_inputs()
    want, _ = numpy_heads(folder, inputs)
    assert max_diff(parts.task(inputs), want) <= 1e-4
    assert not parts.tokenizer.lowercase  # tokenizer_config.json: do_lower_case false
    assert ids(parts.tokenizer, ["The fox"]) == [[9, 8]]


def test_huggingface_bert_pretraining_heads_equal_numpy(tmp_path):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=True)
    parts = read_preset(folder, dropout=0.0)
    assert isinstance(parts.task, BertPretrainer) and parts.backbone.dropout == 0.0
    inputs = mlm_inputs()
    want_mlm, want_nsp = numpy_heads(folder, inputs)
    got = parts.task(inputs)
    assert max_diff(got["mlm"], want_mlm) <= 1e-4
    assert max_diff(got["nsp"], want_nsp) <= 1e-4


def test_huggingface_bert_untied_decoder_is_refused(tmp_path):
    folder = hf_bert_with_heads(tmp_path / "bert", nsp=False, tied_decoder=False)
    with pytest.raises(ValueError, match="not tied"):
        read_preset(folder)


def test_huggingface_gpt2(tmp_path):
    vocabulary = byte_level_vocabulary()
    source = keras_hub.models.GPT2Backbone(
        intermediate_dim=64, **{**TINY, "vocabulary_size": len(vocabulary)}
    )
    folder = hf_gpt2_folder(tmp_path / "gpt2", randomize(source))
    write_byte_level_tokenizer(folder)
    parts = read_preset(folder)
    assert (parts.format, parts.task) == ("huggingface", None)
    assert isinstance(parts.backbone, GPTBackbone)
    ids_, mask = right_padded(vocab=len(vocabulary))
    inputs = {"token_ids": ids_, "padding_mask": mask}
    assert max_diff(parts.backbone(inputs), source(inputs)) <= 1e-5
    reference = BytePairTokenizer(folder / "vocab.json", folder / "merges.txt")
    assert ids(parts.tokenizer, BPE_TEXTS) == ids(reference, BPE_TEXTS)


@pytest.mark.assets
def test_minilm_from_preset_equals_from_huggingface():
    folder = assets.minilm_path()
    got = BertBackbone.from_preset(folder)
    want = BertBackbone.from_huggingface(folder)
    for a, b in zip(got.weights, want.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    parts = read_preset(str(folder))
    assert parts.task is None and parts.tokenizer.lowercase
    reference = WordPieceTokenizer.from_huggingface(folder)
    assert ids(parts.tokenizer, TEXTS) == ids(reference, TEXTS)


# --- keras-hub preset folders, written by keras-hub -------------------------------------------


@pytest.mark.parametrize("lowercase", [True, False])
def test_keras_hub_bert_preset(tmp_path, lowercase):
    folder = str(tmp_path / "bert")
    keras_hub_bert().save_to_preset(folder)
    their_tokenizer = keras_hub.models.BertTokenizer(vocabulary=WORDS, lowercase=lowercase)
    their_tokenizer.save_to_preset(folder)
    parts = read_preset(folder)
    assert (parts.format, parts.task) == ("keras_hub", None)
    theirs = keras_hub.models.Backbone.from_preset(folder)
    inputs = bert_inputs(*right_padded())
    got, want = parts.backbone(inputs), theirs(inputs)
    mask = inputs["padding_mask"]
    assert max_diff(got["sequence_output"], want["sequence_output"], mask) <= 1e-5
    assert max_diff(got["pooled_output"], want["pooled_output"]) <= 1e-5
    assert parts.tokenizer.lowercase == lowercase
    want_ids = [list(map(int, row)) for row in their_tokenizer(TEXTS)]
    assert ids(parts.tokenizer, TEXTS) == want_ids


def test_keras_hub_gpt2_preset(tmp_path):
    folder = str(tmp_path / "gpt2")
    vocabulary = byte_level_vocabulary()
    source = keras_hub.models.GPT2Backbone(
        intermediate_dim=64, **{**TINY, "vocabulary_size": len(vocabulary)}
    )
    randomize(source).save_to_preset(folder)
    their_tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=MERGES)
    their_tokenizer.save_to_preset(folder)
    parts = read_preset(folder, dropout=0.0)
    assert parts.format == "keras_hub" and parts.backbone.dropout == 0.0
    ids_, mask = right_padded(vocab=len(vocabulary))
    inputs = {"token_ids": ids_, "padding_mask": mask}
    theirs = keras_hub.models.Backbone.from_preset(folder)
    assert max_diff(parts.backbone(inputs), theirs(inputs)) <= 1e-5
    want_ids = [list(map(int, row)) for row in their_tokenizer(BPE_TEXTS)]
    assert ids(parts.tokenizer, BPE_TEXTS) == want_ids
    assert vocabulary["<|endoftext|>"] in want_ids[1]  # kept whole


# --- tfllm preset folders ---------------------------------------------------------------------


def tiny_bert(**kwargs):
    return randomize(BertBackbone(intermediate_dim=32, **TINY, **kwargs))


def test_backbone_round_trip(tmp_path):
    backbone = tiny_bert(dropout=0.0)
    tokenizer = WordPieceTokenizer(WORDS, lowercase=False)
    save_preset(backbone, tmp_path / "preset", tokenizer)
    assert sorted(p.name for p in (tmp_path / "preset").iterdir()) == [
        "assets",
        "config.json",
        "metadata.json",
        "model.weights.h5",
    ]
    metadata = json.loads((tmp_path / "preset" / "metadata.json").read_text())
    assert metadata["format"] == "tfllm" and metadata["class_name"] == "BertBackbone"
    parts = read_preset(tmp_path / "preset")
    assert (parts.format, parts.task) == ("tfllm", None)
    assert parts.backbone.get_config() == backbone.get_config()
    inputs = bert_inputs(*right_padded())
    assert_same_outputs(parts.backbone(inputs), backbone(inputs))
    assert not parts.tokenizer.lowercase
    assert ids(parts.tokenizer, TEXTS) == ids(tokenizer, TEXTS)


def test_task_round_trip_and_overrides(tmp_path):
    task = TextClassifier(tiny_bert(), num_classes=3, pooling="mean", dropout=0.0)
    randomize(task.output_dense, seed=3)
    save_preset(task, tmp_path / "preset")
    assert (tmp_path / "preset" / "task.weights.h5").exists()
    parts = read_preset(tmp_path / "preset")
    assert isinstance(parts.task, TextClassifier) and parts.task.backbone is parts.backbone
    assert parts.task.pooling == "mean"
    inputs = bert_inputs(*right_padded())
    assert_same_outputs(parts.task(inputs), task(inputs))
    assert_same_outputs(parts.backbone(inputs), task.backbone(inputs))
    mixed = read_preset(tmp_path / "preset", dtype="mixed_bfloat16")
    assert mixed.backbone.dtype_policy.name == "mixed_bfloat16"
    assert mixed.task.output_dense.dtype_policy.name == "mixed_bfloat16"
    assert max_diff(mixed.task(inputs), task(inputs)) <= 0.1


def test_masked_lm_round_trip_with_bpe(tmp_path):
    vocabulary = byte_level_vocabulary()
    backbone = randomize(BertBackbone(intermediate_dim=32, **{**TINY, "vocabulary_size": 300}))
    task = MaskedLM(backbone)
    randomize(task.mlm_head, seed=4)
    tokenizer = BytePairTokenizer(vocabulary, MERGES, special_tokens=[])
    save_preset(task, tmp_path / "preset", tokenizer=tokenizer)
    parts = read_preset(tmp_path / "preset")
    inputs = mlm_inputs()
    assert_same_outputs(parts.task(inputs), task(inputs))
    assert parts.tokenizer.special_tokens == []  # not the default ["<|endoftext|>"]
    assert ids(parts.tokenizer, BPE_TEXTS) == ids(tokenizer, BPE_TEXTS)


def test_save_preset_replaces_a_preset_and_refuses_other_folders(tmp_path):
    backbone = tiny_bert()
    save_preset(TextClassifier(backbone, num_classes=2), tmp_path / "preset")
    backbone.save_to_preset(tmp_path / "preset")  # a backbone over a task preset
    assert not (tmp_path / "preset" / "task.json").exists()
    assert read_preset(tmp_path / "preset").task is None
    assert [p.name for p in tmp_path.iterdir()] == ["preset"]  # no staging folders left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder or a tfllm preset"):
        save_preset(backbone, other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="keep.txt"):
        save_preset(backbone, other / "keep.txt")
    with pytest.raises(TypeError, match="`model`"):
        save_preset(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "x")


# --- Run folders ------------------------------------------------------------------------------


def test_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    task = TextClassifier(tiny_bert(), num_classes=2)
    task.save(run / "model.keras")
    save_tokenizer(WordPieceTokenizer(WORDS, lowercase=False), run / "tokenizer")
    config = RunConfig(task="classification", model="bert_tiny", dataset="rotten_tomatoes")
    config.save(run / "config.json")
    parts = read_preset(run)
    assert parts.format == "run" and isinstance(parts.task, TextClassifier)
    assert parts.task.backbone is parts.backbone
    inputs = bert_inputs(*right_padded())
    assert_same_outputs(parts.task(inputs), task(inputs))
    assert not parts.tokenizer.lowercase
    rebuilt = read_preset(run, dropout=0.0)
    assert rebuilt.backbone.dropout == 0.0 and rebuilt.task.backbone is rebuilt.backbone
    assert_same_outputs(rebuilt.task(inputs), task(inputs))


def test_overrides_that_change_shapes_are_refused():
    with pytest.raises(ValueError, match="keep the weights' shapes"):
        with_overrides(tiny_bert(), hidden_dim=32, num_heads=2)
    backbone = tiny_bert()
    assert with_overrides(backbone) is backbone


# --- tokenizer.json and tokenizer folders -----------------------------------------------------


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_tokenizer_json_equals_vocab_txt(tmp_path, lowercase):
    corpus = ["The Quick brown foxes jumped over the lazy dogs.", "Café naïve ÉCOLE 3.14!"] * 5
    reference = BertWordPieceTokenizer(lowercase=lowercase)
    reference.train_from_iterator(corpus, vocab_size=120)
    (tmp_path / "files").mkdir()
    (tmp_path / "json").mkdir()
    reference.save_model(str(tmp_path / "files"))
    reference.save(str(tmp_path / "json" / "tokenizer.json"))
    from_json = load_tokenizer(tmp_path / "json")
    from_files = load_tokenizer(tmp_path / "files", lowercase=lowercase)
    assert from_json.lowercase == lowercase
    texts = corpus[:2] + ["FOXES, Über!"]
    want = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    assert ids(from_json, texts) == ids(from_files, texts) == want


@pytest.mark.parametrize("merge_style", ["pairs", "strings"])
def test_bpe_tokenizer_json_equals_vocab_and_merges(tmp_path, merge_style):
    corpus = ["hello world, hello there", "héllo wörld 123 !!"] * 5
    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(corpus, vocab_size=300, special_tokens=["<|endoftext|>"])
    (tmp_path / "files").mkdir()
    (tmp_path / "json").mkdir()
    reference.save_model(str(tmp_path / "files"))
    spec = json.loads(reference.to_str())
    merges = spec["model"]["merges"]
    spec["model"]["merges"] = [
        " ".join(m) if merge_style == "strings" and not isinstance(m, str) else m for m in merges
    ]
    (tmp_path / "json" / "tokenizer.json").write_text(json.dumps(spec))
    from_json = load_tokenizer(tmp_path / "json")
    from_files = load_tokenizer(tmp_path / "files")
    assert from_json.special_tokens == ["<|endoftext|>"]
    texts = BPE_TEXTS + corpus[:2]
    want = [e.ids for e in reference.encode_batch(texts)]
    assert ids(from_json, texts) == ids(from_files, texts) == want


def test_unsupported_tokenizer_json(tmp_path):
    unigram = HFTokenizer(Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0))
    unigram.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="'Unigram'"):
        load_tokenizer(tmp_path)
    spec = json.loads(ByteLevelBPETokenizer(add_prefix_space=True).to_str())
    spec["model"].update(vocab=byte_level_vocabulary(), merges=MERGES)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="add_prefix_space"):
        load_tokenizer(tmp_path)


def test_save_tokenizer_keeps_settings(tmp_path):
    tokenizer = WordPieceTokenizer(WORDS, lowercase=False, strip_accents=True)
    files = save_tokenizer(tokenizer, tmp_path)
    assert sorted(f.name for f in files) == ["keras_tokenizer.json", "vocab.txt"]
    loaded = load_tokenizer(tmp_path)
    assert (loaded.lowercase, loaded.strip_accents) == (False, True)
    assert load_tokenizer(tmp_path, lowercase=True).lowercase
    with pytest.raises(ValueError, match="'bpe'.*WordPieceTokenizer"):
        load_tokenizer(tmp_path, kind="bpe")


# --- Names and errors -------------------------------------------------------------------------


def test_named_presets_have_random_weights_in_their_names():
    assert "bert_base" not in PRESETS and "gpt2_small" not in PRESETS
    assert {"bert_base_random", "gpt2_small_random"} <= set(PRESETS)
    with pytest.raises(ValueError, match=r"\['gpt2_small_random', 'gpt_bench', 'gpt_tiny'"):
        GPTBackbone.from_preset("gpt2_small")
    with pytest.raises(ValueError, match="'bert_tiny'"):
        BertBackbone.from_preset("gpt_tiny")  # another family's name
    with pytest.raises(TypeError, match="`preset`"):
        BertBackbone.from_preset(3)


def test_unknown_folder_lists_files_and_formats(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        read_preset(tmp_path)
    message = str(error.value)
    assert "['config.json', 'pytorch_model.bin']" in message
    for expected in ("model.safetensors", "model.weights.h5", "metadata.json", "model.keras"):
        assert expected in message
    with pytest.raises(ValueError, match="`preset`.*nowhere"):
        read_preset(tmp_path / "nowhere")


def test_wrong_backbone_class(tmp_path):
    folder = hf_bert_folder(tmp_path / "bert", keras_hub_bert())
    with pytest.raises(ValueError, match="BertBackbone, not a GPTBackbone"):
        GPTBackbone.from_preset(folder)
    tiny_bert().save_to_preset(tmp_path / "preset")
    with pytest.raises(ValueError, match="BertBackbone, not a GPTBackbone"):
        GPTBackbone.from_preset(str(tmp_path / "preset"))


def test_unsupported_huggingface_model_type(tmp_path):
    folder = hf_bert_folder(tmp_path / "bert", keras_hub_bert())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="'roberta'.*'bert', 'gpt2'"):
        read_preset(folder)
