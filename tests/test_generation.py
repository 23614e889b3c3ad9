"""Generation: cached == uncached decoding, samplers on known distributions, batching."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import generation
from tfllm.generation import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
    generate,
    get_sampler,
)
from tfllm.models import CausalLM, GPTBackbone

# Prompts of different lengths, for one batch and one by one.
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11], [900]]
NEW = 8


class TableLM:
    """A `CausalLM` stand-in whose next-token distribution depends on the last token only.

    `probs[a, b]` is p(next = b | last = a). `calls` counts `call_with_cache` runs.
    """

    def __init__(self, probs, max_sequence_length=64):
        self.log_probs = tf.constant(np.log(np.asarray(probs, "float64")), tf.float32)
        self.calls = tf.Variable(0)
        self.backbone = types.SimpleNamespace(
            max_sequence_length=max_sequence_length,
            init_cache=lambda batch_size, max_length: tf.zeros([batch_size, max_length]),
        )

    def call_with_cache(
        self, token_ids, cache, index, padding_mask=None, position_ids=None, logit_positions=None
    ):
        self.calls.assign_add(1)
        if logit_positions is not None:
            token_ids = tf.gather(token_ids, logit_positions, batch_dims=1)  # (B,)
        return tf.gather(self.log_probs, token_ids), cache  # (B, T, V) or (B, V)


def random_table(vocab=8, seed=0):
    """Rows of distinct, well separated probabilities (a random order per row)."""
    rng = np.random.default_rng(seed)
    base = np.array([0.45, 0.3, 0.12, 0.06, 0.03, 0.02, 0.012, 0.008])[:vocab]
    return np.stack([rng.permutation(base / base.sum()) for _ in range(vocab)])


def seq_log_prob(probs, first, tokens):
    return sum(np.log(probs[a, b]) for a, b in zip([first, *tokens[:-1]], tokens, strict=True))


@pytest.fixture(scope="module", params=["gpt_tiny", "llama_tiny"])
def lm(request):
    keras.utils.set_random_seed(1)
    return CausalLM(GPTBackbone.from_preset(request.param, dropout=0.0))


def uncached_greedy(model, prompts, steps):
    """Reference: the full forward pass over the whole sequence at every step."""

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32)])
    def next_token(ids):
        logits = model({"token_ids": ids, "padding_mask": tf.ones_like(ids)})
        return tf.argmax(logits[0, -1], output_type=tf.int32)

    outputs = []
    for prompt in prompts:
        seq = list(prompt)
        for _ in range(steps):
            seq.append(int(next_token(np.array([seq], "int32"))))
        outputs.append(seq[len(prompt) :])
    return outputs


# --- the model path -----------------------------------------------------------------------


def test_cached_equals_uncached_and_batch_equals_single(lm):
    batch = generate(lm, PROMPTS, NEW)
    assert batch == uncached_greedy(lm, PROMPTS, NEW)
    assert batch == [generate(lm, [prompt], NEW)[0] for prompt in PROMPTS]


def test_xla_decoding_gives_the_same_tokens(lm):
    """Under XLA the cache is written with a dynamic update slice, else a strided update."""
    for sampler in ("greedy", BeamSampler(2)):
        assert generate(lm, PROMPTS, NEW, sampler, jit_compile=True) == generate(
            lm, PROMPTS, NEW, sampler, jit_compile=False
        )


def test_padded_inputs_on_either_side_give_the_same_tokens(lm):
    expected = np.array(generate(lm, PROMPTS, NEW))
    length = max(map(len, PROMPTS))
    for side in ("left", "right"):
        ids = np.zeros((len(PROMPTS), length), "int32")
        mask = np.zeros_like(ids)
        for i, p in enumerate(PROMPTS):
            cols = slice(length - len(p), None) if side == "left" else slice(0, len(p))
            ids[i, cols], mask[i, cols] = p, 1
        out = generate(lm, {"token_ids": ids, "padding_mask": mask}, NEW)
        np.testing.assert_array_equal(out["token_ids"], expected)
        assert out["padding_mask"].all()
    ragged = generate(lm, tf.ragged.constant(PROMPTS), NEW)
    np.testing.assert_array_equal(ragged.to_tensor(), expected)


def test_position_ids_match_unpadded_positions(lm):
    """`call_with_cache(position_ids=...)` on a left-padded row == the row unpadded."""
    prompt = np.array([[7, 8, 9]], "int32")
    padded = np.array([[0, 0, 7, 8, 9]], "int32")
    cache = lm.backbone.init_cache(1, 5)
    plain, _ = lm.call_with_cache(prompt, lm.backbone.init_cache(1, 3), 0)
    shifted, _ = lm.call_with_cache(
        padded, cache, 0, padding_mask=np.array([[0, 0, 1, 1, 1]]), position_ids=[[0, 0, 0, 1, 2]]
    )
    np.testing.assert_allclose(shifted[:, 2:], plain, atol=1e-5)


@pytest.mark.assets
def test_strings_in_strings_out():
    try:
        from tfllm.assets import gpt2_vocabulary_path
        from tfllm.tokenizers import BytePairTokenizer

        folder = gpt2_vocabulary_path()
        tokenizer = BytePairTokenizer(folder / "gpt2_vocab.json", folder / "gpt2_merges.txt")
    except (ImportError, RuntimeError):  # no asset helper or no registry: a tiny vocabulary
        from tfllm.tokenizers import WordPieceTokenizer

        words = ["[UNK]", "[SEP]", "hello", "world", "the", "cat", "sat", "on", "a", "dog"]
        tokenizer = WordPieceTokenizer(words)
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", dropout=0.0, vocabulary_size=tokenizer.vocabulary_size()
    )
    lm = CausalLM(backbone)
    prompts = ["Hello world", "the cat"]
    texts = generate(lm, prompts, 6, tokenizer=tokenizer, stop_token_ids=())
    assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
    ids = generate(lm, tokenizer.tokenize(prompts), 6, stop_token_ids=())
    expected = [t.decode() for t in tokenizer.detokenize(ids).numpy()]
    assert texts == expected
    assert generate(lm, "the cat", 6, tokenizer=tokenizer, stop_token_ids=()) == texts[1]


# --- samplers on a known distribution -----------------------------------------------------


def test_greedy_picks_the_argmax_chain():
    probs = random_table()
    out = generate(TableLM(probs), [[t] for t in range(8)], 5)
    for first, tokens in enumerate(out):
        last = first
        for token in tokens:
            assert token == probs[last].argmax()
            last = token


def test_one_trace_decodes_any_number_of_new_tokens():
    """The number of new tokens is an input of the decoding graph, not part of its trace:
    batches whose prompts leave different room (an evaluation's) do not retrace it."""
    probs = random_table()
    chain = [2]
    for _ in range(5):
        chain.append(int(probs[chain[-1]].argmax()))
    model = TableLM(probs)
    for sampler in ("greedy", BeamSampler(2)):
        for n in (3, 5, 2):
            tokens = generate(model, [[2]], n, sampler, jit_compile=False)[0]
            assert tokens == chain[1 : n + 1] if sampler == "greedy" else len(tokens) == n
        decoder = generation._decoder(model, get_sampler(sampler), (), False, 1)
        assert decoder.experimental_get_tracing_count() == 1


def test_random_sampler_follows_the_distribution():
    probs = random_table()
    out = generate(TableLM(probs), [[2]] * 4000, 1, sampler="random", seed=0)
    freq = np.bincount(np.array(out)[:, 0], minlength=8) / 4000
    np.testing.assert_allclose(freq, probs[2], atol=0.03)


@pytest.mark.parametrize("sampler, allowed", [(TopKSampler(k=2), 2), (TopKSampler(k=3), 3)])
def test_top_k_never_picks_outside_the_k_best(sampler, allowed):
    probs = random_table()
    out = np.array(generate(TableLM(probs), [[t % 8] for t in range(800)], 4, sampler, seed=1))
    previous = np.concatenate([np.arange(800)[:, None] % 8, out[:, :-1]], axis=1)
    rank = (probs[previous] > np.take_along_axis(probs[previous], out[..., None], -1)).sum(-1)
    assert rank.max() == allowed - 1  # the k-th best is drawn, nothing worse


@pytest.mark.parametrize("p, nucleus", [(0.7, 2), (0.8, 3), (0.5, 2), (0.4, 1)])
def test_top_p_never_picks_outside_the_nucleus(p, nucleus):
    # Sorted probabilities 0.45, 0.3, 0.12, ...: cumulative 0.45, 0.75, 0.87, ...
    probs = random_table()
    out = np.array(generate(TableLM(probs), [[3]] * 1000, 1, TopPSampler(p), seed=2))[:, 0]
    best = np.argsort(-probs[3])
    assert set(out) == set(best[:nucleus])


def test_low_temperature_approaches_greedy():
    probs = random_table()
    prompts = [[t] for t in range(8)]
    greedy = generate(TableLM(probs), prompts, 6)
    assert generate(TableLM(probs), prompts, 6, RandomSampler(temperature=1e-3), seed=3) == greedy
    hot = generate(TableLM(probs), prompts * 20, 6, RandomSampler(temperature=1.0), seed=3)
    assert hot != greedy * 20


def test_beam_search_beats_myopic_greedy():
    # From 0: token 1 (p .5) then anything (p .2), or token 2 (p .4) then 3 (p .9).
    probs = np.full((5, 5), 0.2)
    probs[0] = [0.02, 0.5, 0.4, 0.04, 0.04]
    probs[2] = [0.025, 0.025, 0.025, 0.9, 0.025]
    model = TableLM(probs)
    greedy = generate(model, [[0]], 2)[0]
    beam = generate(model, [[0]], 2, sampler=BeamSampler(num_beams=2))[0]
    assert greedy[0] == 1 and beam == [2, 3]
    assert seq_log_prob(probs, 0, beam) > seq_log_prob(probs, 0, greedy)
    assert generate(model, [[0]], 2, sampler=BeamSampler(num_beams=1))[0] == greedy


def test_beam_search_length_penalty_and_stop_tokens():
    # From 0: stop (4) at once with p .4, or 1 (p .5), then 1 again with p .7 each step.
    probs = np.full((5, 5), 0.2)
    probs[0] = [0.05, 0.5, 1e-9, 0.05, 0.4]
    probs[1] = [0.05, 0.7, 0.05, 0.1, 0.1]
    model = TableLM(probs)
    # Without a length penalty [4] (log .4 = -0.92) beats [1, 1, 1, 1] (log .5 + 3 log .7
    # = -1.76); divided by the length (alpha = 1), -0.92 loses to -1.76 / 4 = -0.44.
    short = generate(
        model, [[0]], 4, sampler=BeamSampler(3, length_penalty=0.0), stop_token_ids=[4]
    )
    long = generate(model, [[0]], 4, sampler=BeamSampler(3, length_penalty=1.0), stop_token_ids=[4])
    assert short == [[4]]
    assert long == [[1, 1, 1, 1]]


def test_samplers_from_names_and_configs():
    assert isinstance(get_sampler("greedy"), GreedySampler)
    assert isinstance(get_sampler("temperature"), RandomSampler)
    sampler = get_sampler({"name": "top_p", "p": 0.5, "k": 10})
    assert sampler.get_config() == {"p": 0.5, "temperature": 1.0, "k": 10}
    for s in (TopKSampler(3, 0.5), TopPSampler(0.8), BeamSampler(4, 0.6), RandomSampler(2.0)):
        copy = type(s).from_config(s.get_config())
        assert copy.get_config() == s.get_config()
        assert get_sampler({"name": s.name, **s.get_config()}).get_config() == s.get_config()


# --- seeds, stopping, XLA, errors ---------------------------------------------------------


def test_seeds_reproduce_and_differ():
    model = TableLM(random_table())
    prompts = [[t % 8] for t in range(16)]
    first = generate(model, prompts, 8, "random", seed=7)
    assert generate(model, prompts, 8, "random", seed=7) == first
    assert generate(model, prompts, 8, "random", seed=8) != first
    assert generate(model, prompts, 8, "top_k", seed=7) == generate(
        model, prompts, 8, "top_k", seed=7
    )


def test_stop_tokens_end_rows_pad_them_and_stop_the_loop():
    probs = np.full((6, 6), 0.01)
    probs[0, 1] = probs[1, 5] = probs[2, 3] = probs[3, 3] = probs[5, 5] = 0.95
    model = TableLM(probs)
    assert generate(model, [[0], [2]], 6, stop_token_ids=[5]) == [[1, 5], [3, 3, 3, 3, 3, 3]]
    out = generate(model, {"token_ids": np.array([[0], [1]])}, 6, stop_token_ids=[5])
    np.testing.assert_array_equal(out["token_ids"], [[1, 5, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["padding_mask"], [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    model.calls.assign(0)
    generate(model, [[0]] * 3, 20, stop_token_ids=[5])
    assert int(model.calls.numpy()) == 2  # prefill, then one step: both rows stopped


def test_jit_compile_gives_the_same_greedy_and_beam_tokens():
    model = TableLM(random_table())
    prompts = [[t] for t in range(8)]
    for sampler in ("greedy", BeamSampler(3)):
        plain = generate(model, prompts, 5, sampler)
        assert generate(model, prompts, 5, sampler, jit_compile=True) == plain


def test_errors():
    model = TableLM(random_table(), max_sequence_length=16)
    with pytest.raises(ValueError, match="max_sequence_length"):
        generate(model, [[1] * 10], 7)
    generate(model, [[1] * 10], 6)  # exactly the context
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(model, [[1]], bad)
    for empty in ([], {"token_ids": np.zeros((0, 3), "int32")}):
        with pytest.raises(ValueError, match="empty"):
            generate(model, empty, 3)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(2, 2\)"):
        generate(model, {"token_ids": np.ones((2, 3), "int32"), "padding_mask": np.ones((2, 2))}, 3)
    for bad in ("nucleus", {"name": "top_q"}, 3):
        with pytest.raises(ValueError, match="sampler"):
            generate(model, [[1]], 3, sampler=bad)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, ["text"], 3)
    with pytest.raises(ValueError, match="temperature"):
        RandomSampler(0.0)
    with pytest.raises(ValueError, match="`p`"):
        TopPSampler(1.5)
    with pytest.raises(ValueError, match="`k`"):
        TopKSampler(0)
    assert generation.PAD_ID == 0
