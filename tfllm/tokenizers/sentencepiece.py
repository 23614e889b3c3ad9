"""SentencePiece (unigram or BPE models) on tensorflow-text's in-graph op."""

import base64
import hashlib
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.python.ops import sentencepiece_tokenizer as tf_text_sentencepiece

from tfllm.tokenizers.base import Tokenizer


class _NamedModelResource(tf_text_sentencepiece._SentencepieceModelResource):
    """tf-text's model resource under a `shared_name`, so that it outlives its op kernel.

    tf-text's own resource belongs to the kernel, and `keras.utils.set_random_seed`,
    `tf.random.set_seed` and `keras.backend.clear_session` clear the eager kernel cache:
    tokenizers made before such a call then fail with "Resource ... does not exist". Named
    resources live in the resource manager (one per distinct model, kept until exit).
    """

    def _create_resource(self):
        name = "tfllm_sentencepiece_" + hashlib.sha256(self._model).hexdigest()
        with tf.name_scope("SentenceTokenizerInitializer"):
            return tf_text_sentencepiece.gen_sentencepiece_tokenizer.sentencepiece_op(
                model=self._model, shared_name=name
            )


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # "File name too long": the base64 text of a model
        return False


def _proto_bytes(proto) -> bytes:
    """Model bytes from bytes, a `*.model` path, or the base64 text `get_config` stores."""
    if isinstance(proto, bytes):
        data = proto
    elif isinstance(proto, Path) or (isinstance(proto, str) and _is_file(proto)):
        if not Path(proto).is_file():
            raise ValueError(f"`proto` file {str(proto)!r} does not exist.")
        data = Path(proto).read_bytes()
    elif isinstance(proto, str):
        try:
            data = base64.b64decode(proto, validate=True)
        except ValueError:
            raise ValueError(f"`proto` file {proto!r} does not exist.") from None
    else:
        raise TypeError(f"`proto` must be bytes or a path. Received: {type(proto).__name__}")
    if not data:
        raise ValueError("`proto` is empty.")
    return data


@keras.saving.register_keras_serializable(package="tfllm")
class SentencePieceTokenizer(Tokenizer):
    """A trained SentencePiece model, in the graph; ids equal the `sentencepiece` library's.

    Args:
        proto: the serialized model (`bytes`) or the path of a `*.model` file.
        add_bos, add_eos: add the model's BOS / EOS ids around every sequence.

    Special token ids (`None` when the model has none): `unk_token_id`, `bos_token_id`,
    `eos_token_id`, `pad_token_id`.

    Example:
    >>> folder = tfllm.assets.sentencepiece_test_path()  # from the sentencepiece sdist
    >>> tokenizer = SentencePieceTokenizer(folder / "botchan_en_unigram_1000.model")
    >>> tokenizer.tokenize(["Hello world"])
    <tf.RaggedTensor [[151, 88, 21, 887]]>
    >>> tokenizer.detokenize(tokenizer.tokenize(["Hello world"])).numpy()
    array([b'Hello world'], dtype=object)
    """

    def __init__(self, proto, add_bos: bool = False, add_eos: bool = False, **kwargs):
        super().__init__(**kwargs)
        proto = _proto_bytes(proto)
        self.proto = proto
        self.add_bos = add_bos
        self.add_eos = add_eos
        try:
            self._tokenizer = tf_text.SentencepieceTokenizer(
                model=proto, out_type=tf.int32, add_bos=add_bos, add_eos=add_eos
            )
            self._tokenizer._model_resource = _NamedModelResource(proto, None)
            size = int(self._tokenizer.vocab_size())
            pieces = self._tokenizer.id_to_string(tf.range(size)).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.InternalError) as error:
            raise ValueError(
                f"`proto` is not a valid SentencePiece model: {error.message}"
            ) from None
        self._set_vocabulary([p.decode("utf-8") for p in pieces])
        self.unk_token_id = self._optional_id("<unk>")
        self.bos_token_id = self._optional_id("<s>")
        self.eos_token_id = self._optional_id("</s>")
        self.pad_token_id = self._optional_id("<pad>")

    def _tokenize(self, strings):
        return self._tokenizer.tokenize(strings)

    def _detokenize(self, ids):
        return self._tokenizer.detokenize(ids)

    def word_start_mask(self) -> list[bool]:
        """For each id: does the piece start a word (begins with "▁")?"""
        return [p.startswith("\u2581") for p in self.vocabulary]

    def get_config(self):
        config = super().get_config()
        config.update(
            proto=base64.b64encode(self.proto).decode("ascii"),
            add_bos=self.add_bos,
            add_eos=self.add_eos,
        )
        return config

    @classmethod
    def from_huggingface(cls, path) -> "SentencePieceTokenizer":
        """Loads the `*.model` file of a HF folder (e.g. `spiece.model`, `tokenizer.model`)."""
        models = sorted(Path(path).glob("*.model"))
        if len(models) != 1:
            raise ValueError(
                f"`path` must hold exactly one SentencePiece `*.model` file. "
                f"Received: {str(path)!r} with {[m.name for m in models]}"
            )
        return cls(models[0])
