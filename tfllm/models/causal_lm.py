"""`CausalLM`: next-token prediction on a `GPTBackbone`, with keras-hub's `generate`."""

import keras
from keras import ops

from tfllm import generation
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.models.completion import complete
from tfllm.models.gpt import GPTBackbone
from tfllm.models.task import Task, check_backbone
from tfllm.preprocessing import CausalLMPreprocessor


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLM(Task):
    """Next-token prediction: `GPTBackbone` + output projection (tied by default).

    Args:
        backbone: a `GPTBackbone`.
        preprocessor: a `CausalLMPreprocessor`, or None. With one, `fit` / `evaluate` take
            raw texts and `generate` takes and returns strings.

    Inputs: the backbone's dict (`token_ids`, `padding_mask`, ...).
    Output: `logits` `(B, T, vocabulary_size)`; position `t` predicts token `t + 1`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    >>> preprocessor = tfllm.preprocessing.CausalLMPreprocessor(tokenizer, sequence_length=16)
    >>> backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=5)
    >>> lm = CausalLM(backbone, preprocessor=preprocessor)
    >>> history = lm.fit(["a a a", "a a"], epochs=1, verbose=0)
    >>> lm.compile(sampler="greedy")
    >>> len(lm.generate(["a a"], max_length=8)[0]) > 0
    True
    """

    backbone_cls = GPTBackbone
    preprocessor_cls = CausalLMPreprocessor
    default_learning_rate = 2e-5

    def __init__(self, backbone: GPTBackbone, preprocessor=None, **kwargs):
        check_backbone("CausalLM", backbone, GPTBackbone)
        inputs = backbone.input
        logits = backbone.token_embedding(backbone(inputs), reverse=True)
        super().__init__(
            inputs=inputs, outputs=logits, backbone=backbone, preprocessor=preprocessor, **kwargs
        )
        if not self.compiled:  # `compile(sampler=...)` sets it otherwise
            self.sampler = generation.get_sampler("greedy")

    def default_loss(self):
        """Token cross-entropy, the mean over weighted tokens: `sum(w * loss) / sum(w)`.

        Keras's default divides by all `B * T` labels, padding and prompts included, so a
        batch's loss would shrink with its prompts' share; here it is the mean over
        response tokens (prompts and responses; that of the `causal_lm_sft` run) or over
        real tokens (texts).
        """
        return SparseCategoricalCrossentropy(reduction="mean_with_sample_weight")

    def compile(self, *args, sampler="greedy", **kwargs):
        """`Task.compile`, plus the `sampler` of `generate` (a name, dict or `Sampler`)."""
        super().compile(*args, **kwargs)
        self.sampler = generation.get_sampler(sampler)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:  # compiled (else `{}`): the sampler goes with the other compile arguments
            config["sampler"] = {"name": self.sampler.name, **self.sampler.get_config()}
        return config

    def preprocess_samples(self, x, y=None, sample_weight=None):
        x, y, sample_weight = self.preprocessor(x, y, sample_weight)
        if self.backbone.packed_sequences:  # one document per row: its tokens are segment 1
            x = dict(x, segment_ids=x["padding_mask"])
        return x, y, sample_weight

    def generate(
        self,
        inputs,
        max_length: int | None = None,
        stop_token_ids="auto",
        strip_prompt: bool = False,
        sampler=None,
        seed: int | None = None,
    ):
        """Continues prompts, as keras-hub's `CausalLM.generate`.

        Args:
            inputs: a string or a list of strings (needs a preprocessor); a chat (needs
                a preprocessor): one conversation, a list of `{"role", "content"}`
                messages (roles `system`, `user`, `assistant`; not ending with an
                assistant message), or a list of conversations, written with the
                preprocessor's chat template and the assistant prefix; a dict of
                `token_ids` and `padding_mask` `(B, L)` (prompts right-padded; generation
                fills each row up to `L`); or a `tf.data.Dataset` of strings or token
                dicts (batched).
            max_length: total length, prompt included, for string inputs (default: the
                preprocessor's `sequence_length`); token dicts use their width `L`.
            stop_token_ids: `"auto"` (the preprocessor's end token; needs a preprocessor),
                None (generate to `max_length`) or a sequence of ids.
            strip_prompt: return the new tokens only.
            sampler: overrides the sampler set by `compile(sampler=...)` for this call.
            seed: int for reproducible sampling.

        Returns:
            A string or list of strings (prompt + continuation, special tokens removed)
            for string inputs; the assistant's reply (a string per conversation) for a
            chat, whatever `strip_prompt`; for token dicts, a dict of `token_ids` `(B, L)`
            and boolean `padding_mask` (`(B, N)` new tokens only with `strip_prompt`).

        Example:
        >>> lm.generate([{"role": "user", "content": "2+2?"}], max_length=32)  # doctest: +SKIP
        '4'
        """
        sampler = self.sampler if sampler is None else sampler
        return complete(self, inputs, max_length, stop_token_ids, strip_prompt, sampler, seed)

    def call_with_cache(
        self,
        token_ids,
        cache,
        cache_update_index,
        padding_mask=None,
        position_ids=None,
        logit_positions=None,
    ):
        """`(logits (B, T, V), cache)` for `T` new tokens; see `GPTBackbone.call_with_cache`.

        `logit_positions`: optional `(B,)` index into `T` per row; then only those logits
        are computed, `(B, V)` (a prompt's prefill needs just its last position's).
        """
        x, cache = self.backbone.call_with_cache(
            token_ids, cache, cache_update_index, padding_mask, position_ids
        )
        if logit_positions is not None:
            x = ops.take_along_axis(x, ops.reshape(logit_positions, (-1, 1, 1)), axis=1)[:, 0]
        return self.backbone.token_embedding(x, reverse=True), cache
