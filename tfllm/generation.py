"""Text generation with a KV cache: samplers and one `tf.function` that decodes.

The prompts are prefilled in one `call_with_cache` call, then a `tf.while_loop` feeds one
token per step with the KV cache as loop state (no host round trip per token), and stops
as soon as every row has produced a stop token.

Prompts of different lengths share one cache index: they are padded (on either side), the
padding is masked, and each token gets its own position from `position_ids`
(`cumsum(padding_mask) - 1` in the prompt, `prompt_length + i` for new token `i`). So a
prompt padded in a batch gives the same tokens as the prompt alone.

Example:
>>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=5, dropout=0.0))
>>> new_ids = generate(lm, [[4, 3, 4], [4]], max_new_tokens=4)  # new ids, a list per prompt
>>> [len(ids) for ids in new_ids]
[4, 4]
>>> generate(lm, [[4]], max_new_tokens=4) == new_ids[1:]  # as when padded in the batch
True
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hi"])
>>> texts = generate(lm, ["Hi"], 8, sampler=TopPSampler(0.9), seed=1, tokenizer=tokenizer)
>>> texts == generate(lm, ["Hi"], 8, sampler=TopPSampler(0.9), seed=1, tokenizer=tokenizer)
True
"""

import collections
import json
import random

import numpy as np
import tensorflow as tf

PAD_ID = 0  # fills prompts and outputs; always masked out


def _is_stop(tokens, stop_token_ids):
    """Where `tokens` hold one of the (python int) `stop_token_ids`."""
    stop = tf.constant(list(stop_token_ids) or [-1], tf.int32)  # -1 matches nothing
    return tf.reduce_any(tokens[..., None] == stop, axis=-1)


def _positive_int(name, value, optional=False):
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        extra = " or None" if optional else ""
        raise ValueError(f"`{name}` must be a positive int{extra}. Received: {value!r}")
    return int(value)


def _number_in(name, value, low, high):
    """`value` in `(low, high]`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"`{name}` must be a number in ({low}, {high}]. Received: {value!r}")
    return value


class Sampler:
    """Chooses next tokens from logits. `get_config()` returns the constructor arguments.

    Token samplers are called as `sampler(logits (B, V) float32, seed (2,)) -> (B,) int32`.
    """

    name = ""

    def __call__(self, logits, seed):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class GreedySampler(Sampler):
    """The most likely token."""

    name = "greedy"

    def __call__(self, logits, seed):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)


class RandomSampler(Sampler):
    """A token drawn from `softmax(logits / temperature)` (stateless, seeded)."""

    name = "random"

    def __init__(self, temperature: float = 1.0):
        self.temperature = _number_in("temperature", temperature, 0, np.inf)

    def candidates(self, logits):
        """`(logits (B, C), ids (B, C) or None)` of the tokens that may be drawn."""
        return logits, None

    def __call__(self, logits, seed):
        logits, ids = self.candidates(logits / self.temperature)
        choice = tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]
        return choice if ids is None else tf.gather(ids, choice, batch_dims=1)

    def get_config(self):
        return {"temperature": self.temperature}


class TopKSampler(RandomSampler):
    """A token drawn from the `k` most likely ones (after `temperature`)."""

    name = "top_k"

    def __init__(self, k: int = 5, temperature: float = 1.0):
        super().__init__(temperature)
        self.k = _positive_int("k", k)

    def candidates(self, logits):
        return tf.math.top_k(logits, k=tf.minimum(self.k, tf.shape(logits)[-1]))

    def get_config(self):
        return {"k": self.k, **super().get_config()}


class TopPSampler(RandomSampler):
    """Nucleus sampling: the fewest most likely tokens whose probability sum reaches `p`.

    `k` optionally limits the candidates first (faster for large vocabularies).
    """

    name = "top_p"

    def __init__(self, p: float = 0.9, temperature: float = 1.0, k: int | None = None):
        super().__init__(temperature)
        self.p = _number_in("p", p, 0, 1)
        self.k = _positive_int("k", k, optional=True)

    def candidates(self, logits):
        size = tf.shape(logits)[-1]
        values, ids = tf.math.top_k(logits, k=size if self.k is None else tf.minimum(self.k, size))
        # Keep a token while the more likely ones sum to less than p (the first always).
        before = tf.cumsum(tf.nn.softmax(values), axis=-1, exclusive=True)
        return tf.where(before < self.p, values, -np.inf), ids

    def get_config(self):
        return {"p": self.p, **super().get_config(), "k": self.k}


class BeamSampler(Sampler):
    """Beam search: keeps the `num_beams` best partial sequences, returns the best one.

    A finished sequence scores `sum(log p) / length ** length_penalty` (as Hugging Face),
    `length` counting the generated tokens, the stop token included; `length_penalty > 0`
    favours longer sequences. Deterministic: the seed is unused.
    """

    name = "beam"

    def __init__(self, num_beams: int = 5, length_penalty: float = 1.0):
        self.num_beams = _positive_int("num_beams", num_beams)
        self.length_penalty = _number_in("length_penalty", length_penalty, -np.inf, np.inf)

    def get_config(self):
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty}


SAMPLERS = {
    cls.name: cls for cls in (GreedySampler, RandomSampler, TopKSampler, TopPSampler, BeamSampler)
}
SAMPLERS["temperature"] = RandomSampler


def get_sampler(identifier) -> Sampler:
    """A `Sampler` from itself, a name in `SAMPLERS` or a dict `{"name": ..., **config}`."""
    if isinstance(identifier, Sampler):
        return identifier
    config = {}
    if isinstance(identifier, dict):
        config = dict(identifier)
        identifier = config.pop("name", None)
    if not isinstance(identifier, str) or identifier not in SAMPLERS:
        raise ValueError(
            f"`sampler` must be a Sampler, one of {sorted(SAMPLERS)} or a dict with such a "
            f"'name'. Received: {identifier!r}"
        )
    return SAMPLERS[identifier].from_config(config)


def decode(model, token_ids, padding_mask, max_new_tokens, sampler, stop_token_ids=(), seed=None):
    """The decoding graph: `(new_ids (B, N) int32, new_mask (B, N) bool)`. Traceable.

    Args:
        model: a `CausalLM` (anything with `call_with_cache`, taking `logit_positions`,
            and `backbone.init_cache`).
        token_ids, padding_mask: `(B, P)` prompts, padded on either side (every row needs
            a token).
        max_new_tokens: `N`, a python int or a scalar int32 tensor.
        sampler: a `Sampler` (or identifier).
        stop_token_ids: python ints; a row stops after producing one of them (it is kept
            in the output and masked in, later positions hold `PAD_ID` and are masked out).
        seed: `(2,)` int seed of the stateless random ops, or `(B, 2)`: one per row, for a
            sampler that draws each row alone (`sampler(logits, seeds (B, 2))`), so that a
            row's tokens do not depend on the rows batched with it.
    """
    sampler = get_sampler(sampler)
    token_ids = tf.cast(token_ids, tf.int32)
    mask = tf.cast(padding_mask, tf.int32)
    seed = tf.zeros([2], tf.int32) if seed is None else tf.cast(seed, tf.int32)
    batch, length = token_ids.shape[0] or tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    lengths = tf.reduce_sum(mask, axis=1)  # (B,)
    positions = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)  # (B, P)
    last = tf.argmax(tf.cumsum(mask, axis=1) * mask, axis=1, output_type=tf.int32)
    # Cache slots: the padded prompt, then the new tokens.
    cache_mask = tf.concat([mask, tf.ones([batch, max_new_tokens], tf.int32)], axis=1)
    cache = model.backbone.init_cache(batch, length + max_new_tokens)
    logits, cache = model.call_with_cache(
        token_ids, cache, 0, padding_mask=cache_mask, position_ids=positions, logit_positions=last
    )
    logits = tf.cast(logits, tf.float32)  # (B, V): after each prompt's last token

    rows = sampler.num_beams if isinstance(sampler, BeamSampler) else 1
    cache_mask, lengths = tf.repeat(cache_mask, rows, axis=0), tf.repeat(lengths, rows)

    # A row past the context (only where `decode_prompts` was given `max_length`: its
    # later tokens are dropped) keeps the last position instead of reading past the table.
    last_position = model.backbone.max_sequence_length - 1

    def forward(tokens, cache, i):
        """`(B * rows, V)` logits after new token `i - 1`, `tokens (B * rows,)`."""
        logits, cache = model.call_with_cache(
            tokens[:, None],
            cache,
            length + i - 1,  # its cache slot
            padding_mask=cache_mask,
            position_ids=tf.minimum(lengths + i - 1, last_position)[:, None],
        )
        return tf.cast(logits[:, -1], tf.float32), cache

    def is_stop(tokens):
        return _is_stop(tokens, stop_token_ids)

    if isinstance(sampler, BeamSampler):
        new_ids = _beam_search(
            sampler, logits, cache, forward, is_stop, len(stop_token_ids), max_new_tokens
        )
    else:

        def sample(logits, i):
            if seed.shape.rank == 2:  # per row, as if each row were decoded alone
                fold = tf.random.experimental.stateless_fold_in
                return sampler(logits, tf.map_fn(lambda row: fold(row, i), seed))
            return sampler(logits, tf.random.experimental.stateless_fold_in(seed, i))

        tokens = sample(logits, 0)
        out = tf.tensor_scatter_nd_update(
            tf.fill([max_new_tokens, batch], PAD_ID), [[0]], tokens[None]
        )  # (N, B): row i is new token i

        def body(i, tokens, done, out, cache):
            logits, cache = forward(tokens, cache, i)
            tokens = tf.where(done, PAD_ID, sample(logits, i))
            out = tf.tensor_scatter_nd_update(out, [[i]], tokens[None])
            return i + 1, tokens, done | is_stop(tokens), out, cache

        _, _, _, out, _ = tf.while_loop(
            lambda i, tokens, done, out, cache: ~tf.reduce_all(done),
            body,
            (tf.constant(1), tokens, is_stop(tokens), out, cache),
            maximum_iterations=max_new_tokens - 1,
        )
        new_ids = tf.transpose(out)
    # A token is output while no stop token came before it.
    new_mask = tf.cumsum(tf.cast(is_stop(new_ids), tf.int32), axis=1, exclusive=True) == 0
    return tf.where(new_mask, new_ids, PAD_ID), new_mask


def _beam_search(sampler, logits, cache, forward, is_stop, num_stop, max_new_tokens):
    """Beam search over `(B, V)` first logits; returns the best `(B, N)` new tokens.

    `alive` beams may grow; `finished` ones ended in a stop token and keep their
    length-normalised score. Each step looks at `W * (1 + #stop)` candidates so that at
    least `W` of them can stay alive.
    """
    beams, alpha, n = sampler.num_beams, sampler.length_penalty, max_new_tokens
    batch, vocab = logits.shape[0] or tf.shape(logits)[0], logits.shape[-1]  # static if known
    num_candidates = beams * (1 + num_stop)
    num_candidates = min(num_candidates, beams * vocab) if vocab else num_candidates
    cache = tf.nest.map_structure(lambda c: tf.repeat(c, beams, axis=0), cache)  # (B * W, ...)
    logits = tf.repeat(logits, beams, axis=0)
    # Only beam 0 is live at first, so the first step does not pick one token W times.
    alive_logp = tf.tile(tf.constant([[0.0] + [-np.inf] * (beams - 1)]), [batch, 1])  # (B, W)
    alive_seq = tf.fill([batch, beams, n], PAD_ID)
    finished_score = tf.fill([batch, beams], -np.inf)
    finished_seq = tf.fill([batch, beams, n], PAD_ID)

    def step(i, logits, alive_logp, alive_seq, finished_score, finished_seq):
        logp = tf.nn.log_softmax(logits)  # (B * W, V)
        logp = alive_logp[:, :, None] + tf.reshape(logp, [batch, beams, -1])
        scores, index = tf.math.top_k(tf.reshape(logp, [batch, -1]), num_candidates)  # (B, C)
        vocab_size = tf.shape(logp)[-1]
        parent, token = index // vocab_size, index % vocab_size
        seqs = tf.gather(alive_seq, parent, batch_dims=1)  # (B, C, N)
        seqs = tf.where(tf.range(n) == i, token[..., None], seqs)
        stopped = is_stop(token)
        normalised = scores / tf.cast(i + 1, tf.float32) ** alpha
        finished_score, top = tf.math.top_k(
            tf.concat([finished_score, tf.where(stopped, normalised, -np.inf)], axis=1), beams
        )
        finished_seq = tf.gather(tf.concat([finished_seq, seqs], axis=1), top, batch_dims=1)
        alive_logp, top = tf.math.top_k(tf.where(stopped, -np.inf, scores), beams)
        alive_seq = tf.gather(seqs, top, batch_dims=1)
        parent = tf.gather(parent, top, batch_dims=1) + tf.range(batch)[:, None] * beams
        tokens = tf.gather(token, top, batch_dims=1)
        return alive_logp, alive_seq, finished_score, finished_seq, tf.reshape(parent, [-1]), tokens

    def done(i, alive_logp, finished_score):
        # No alive beam can beat the worst kept finished one (log-probs only decrease).
        steps = tf.cast(i, tf.float32)
        best = alive_logp[:, 0] / tf.maximum(steps**alpha, tf.cast(n, tf.float32) ** alpha)
        return tf.reduce_all(finished_score[:, -1] >= best)

    def body(i, tokens, parent, state, cache):
        cache = tf.nest.map_structure(lambda c: tf.gather(c, parent, axis=0), cache)
        logits, cache = forward(tf.reshape(tokens, [-1]), cache, i)
        *state, parent, tokens = step(i, logits, *state)
        return i + 1, tokens, parent, tuple(state), cache

    *state, parent, tokens = step(0, logits, alive_logp, alive_seq, finished_score, finished_seq)
    i, _, _, state, _ = tf.while_loop(
        lambda i, tokens, parent, state, cache: ~done(i, state[0], state[2]),
        body,
        (tf.constant(1), tokens, parent, tuple(state), cache),
        maximum_iterations=n - 1,
    )
    alive_logp, alive_seq, finished_score, finished_seq = state
    # Alive beams compete too, scored at their current length.
    scores = tf.concat([finished_score, alive_logp / tf.cast(i, tf.float32) ** alpha], axis=1)
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    return tf.gather(tf.concat([finished_seq, alive_seq], axis=1), best, batch_dims=1)


# Compiled decoders, newest last; a few are kept so repeated calls do not retrace.
_DECODERS: collections.OrderedDict = collections.OrderedDict()


def _decoder(model, sampler, stop_token_ids, jit_compile, batch_size):
    """The decoding `tf.function` for one batch size (any prompt length and number of
    new tokens: `run(token_ids, padding_mask, max_new_tokens, seed)`).

    A static batch size lets grappler fold the shape arithmetic of every layer out of
    the loop: 9% less time per token at batch 1 without XLA (bench size), for one
    trace per batch size (keras-hub's `generate` traces per batch size and length).
    The number of new tokens is an input, not part of the trace: batches of prompts
    generated up to one length need different numbers.
    """
    key = (model, sampler.name, json.dumps(sampler.get_config()))
    key += (tuple(stop_token_ids), jit_compile, batch_size)
    # A trace reads the variables it saw: after `enable_lora` / `merge_lora` (weights
    # added or removed) it would decode with the old ones, so they are part of the key.
    key += (tuple(id(w) for w in getattr(model, "weights", ())),)
    if key not in _DECODERS:
        prompts = tf.TensorSpec([batch_size, None], tf.int32)
        scalar = tf.TensorSpec([], tf.int32)
        signature = [prompts, prompts, scalar, tf.TensorSpec([2], tf.int32)]

        @tf.function(input_signature=signature, jit_compile=jit_compile)
        def run(token_ids, padding_mask, max_new_tokens, seed):
            return decode(
                model, token_ids, padding_mask, max_new_tokens, sampler, stop_token_ids, seed
            )

        _DECODERS[key] = run
        while len(_DECODERS) > 8:
            _DECODERS.popitem(last=False)
    _DECODERS.move_to_end(key)
    return _DECODERS[key]


def _prompts_to_ragged(prompts, tokenizer):
    """`(kind, ids)`: ragged ids `(B, (n))` (None when empty) and how to return them."""
    if isinstance(prompts, dict):
        if "token_ids" not in prompts:
            raise ValueError(f"A `prompts` dict needs 'token_ids'. Received: {list(prompts)}")
        # In numpy: `tf.ragged.boolean_mask` runs dozens of eager ops, which take longer
        # than a small model's whole decoding loop.
        ids = np.asarray(prompts["token_ids"])
        mask = np.asarray(prompts.get("padding_mask", np.ones_like(ids))).astype(bool)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                "`prompts['token_ids']` and `['padding_mask']` must be (B, L) arrays of one "
                f"shape. Received: shapes {ids.shape} and {mask.shape}"
            )
        return "dict", tf.RaggedTensor.from_row_lengths(ids[mask], mask.sum(axis=1))
    if isinstance(prompts, tf.RaggedTensor):
        return "ragged", prompts
    if isinstance(prompts, (list, tuple)) and all(
        isinstance(p, (list, tuple, np.ndarray)) for p in prompts
    ):
        return "lists", tf.ragged.constant(prompts, tf.int32, ragged_rank=1) if prompts else None
    try:
        tensor = tf.convert_to_tensor(prompts)
    except (ValueError, TypeError):
        tensor = None
    if tensor is not None and tensor.dtype.is_integer and tensor.shape.rank == 2:
        return "dict", tf.RaggedTensor.from_tensor(tensor)
    if tensor is None or tensor.dtype != tf.string or tensor.shape.rank > 1:
        raise ValueError(
            "`prompts` must be a string, a list of strings, a list of token id lists, a "
            "RaggedTensor, a 2-D id array or a dict of 'token_ids' and 'padding_mask'. "
            f"Received: {prompts!r:.200}"
        )
    if tokenizer is None:
        raise ValueError("String `prompts` need a `tokenizer`. Received: tokenizer=None")
    kind = "string" if tensor.shape.rank == 0 else "strings"
    return kind, tokenizer.tokenize(tf.reshape(tensor, [-1])) if tf.size(tensor) else None


def decode_prompts(
    model, ids, max_new_tokens, sampler, stop_token_ids=(), seed=None, jit_compile=None,
    max_length=None,
):  # fmt: skip
    """Checks, then runs the compiled decoder on ragged prompt ids `(B, (n))`.

    Returns `(new_ids (B, N) int32, new_mask (B, N) bool)` tensors (see `decode`); the
    shared core of `generate` and `CausalLM.generate`. `max_length`: the caller keeps only
    each row's tokens up to this total length (at most the model's context), so only it
    must fit, not the longest prompt plus `max_new_tokens`.
    """
    sampler = get_sampler(sampler)
    max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
    if ids is None or ids.shape[0] == 0:
        raise ValueError("`prompts` must not be empty.")
    lengths = ids.row_lengths().numpy()
    if lengths.min() == 0:
        raise ValueError(
            f"Every prompt needs at least one token. Prompt {lengths.argmin()} is empty."
        )
    context = model.backbone.max_sequence_length
    if max_length is not None and not lengths.max() <= max_length <= context:
        raise ValueError(
            f"`max_length` ({max_length}) must hold the longest prompt ({lengths.max()} "
            f"tokens) and fit the model's context (`max_sequence_length` = {context})."
        )
    if max_length is None and lengths.max() + max_new_tokens > context:
        raise ValueError(
            f"The longest prompt ({lengths.max()} tokens) plus `max_new_tokens` "
            f"({max_new_tokens}) exceeds the model's context (`max_sequence_length` = {context})."
        )
    seed = random.SystemRandom().randrange(2**62) if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int or None. Received: {seed!r}")
    seed = tf.constant(divmod(int(seed) % 2**62, 2**31), tf.int32)
    ids = tf.cast(ids, tf.int32)
    token_ids = ids.to_tensor(PAD_ID)
    padding_mask = tf.cast(tf.ones_like(ids).to_tensor(0), tf.int32)
    if jit_compile is None:
        jit_compile = bool(tf.config.list_logical_devices("GPU"))
    run = _decoder(model, sampler, stop_token_ids, bool(jit_compile), int(token_ids.shape[0]))
    return run(token_ids, padding_mask, tf.constant(max_new_tokens, tf.int32), seed)


def generate(
    model,
    prompts,
    max_new_tokens: int,
    sampler="greedy",
    stop_token_ids=None,
    seed: int | None = None,
    tokenizer=None,
    jit_compile: bool | None = None,
):
    """Continues prompts with a `CausalLM`: strings in, strings out; ids in, ids out.

    Args:
        model: a tfllm `CausalLM`.
        prompts: a string or list of strings (needs `tokenizer`); a list of token id lists
            or a `tf.RaggedTensor`; or padded ids, a 2-D array or a dict of `token_ids`
            and `padding_mask` (padding on either side).
        max_new_tokens: tokens to generate per prompt (fewer after a stop token).
        sampler: a `Sampler`, a name in `SAMPLERS` ("greedy", "random"/"temperature",
            "top_k", "top_p", "beam") or a dict `{"name": ..., **config}`.
        stop_token_ids: ids that end a row. `None`: the tokenizer's `eos_token_id` when
            there is one, else none; `()` disables stopping.
        seed: int for reproducible sampling; `None` draws one.
        tokenizer: a tfllm tokenizer (`tokenize` / `detokenize`).
        jit_compile: compile the decoding loop with XLA; `None`: only when a GPU is
            visible (on CPU XLA compiles for seconds; sampled tokens differ from the
            non-XLA ones for the same seed).

    Returns:
        The new tokens only: strings for string prompts (without the stop token; for
        byte-level BPE `prompt + output` is the full text), lists of ids for lists, a
        `tf.RaggedTensor` for ragged prompts (ids end with the stop token when one was
        produced), and for padded prompts a dict of `token_ids` `(B, N)` (padded with 0)
        and boolean `padding_mask` `(B, N)`.

    Example:
    >>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=16))
    >>> new_ids = generate(lm, [[1, 2, 3], [4]], 8, sampler=TopKSampler(k=10), seed=0)
    >>> [len(ids) for ids in new_ids], all(0 <= i < 16 for ids in new_ids for i in ids)
    ([8, 8], True)
    """
    kind, ids = _prompts_to_ragged(prompts, tokenizer)
    if stop_token_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        stop_token_ids = () if eos is None else (eos,)
    stop_token_ids = tuple(int(t) for t in np.atleast_1d(stop_token_ids))
    new_ids, new_mask = decode_prompts(
        model, ids, max_new_tokens, sampler, stop_token_ids, seed, jit_compile
    )
    if kind == "dict":
        return {"token_ids": new_ids.numpy(), "padding_mask": new_mask.numpy()}
    ragged = tf.ragged.boolean_mask(new_ids, new_mask)
    if kind == "ragged":
        return ragged
    if kind == "lists":
        return ragged.to_list()
    keep = new_mask & ~_is_stop(new_ids, stop_token_ids)
    texts = tokenizer.detokenize(tf.ragged.boolean_mask(new_ids, keep)).numpy()
    texts = [text.decode("utf-8", errors="replace") for text in texts]
    return texts[0] if kind == "string" else texts
