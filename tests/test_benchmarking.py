"""Tests for tfllm.benchmarking: FLOP counts, batches, interleaving, BENCHMARKS.md sections."""

import numpy as np
import pytest

from tfllm import benchmarking as bench
from tfllm.models import BertBackbone, GPTBackbone


def test_flops_per_token_of_gpt2_layout_matches_hand_count():
    # Per block: fused q/k/v 3 d^2, output d^2, feed-forward 2 d ff; plus the V x d head.
    d, ff, layers, vocab, length = 64, 256, 2, 1024, 16
    weights = layers * (4 * d * d + 2 * d * ff) + vocab * d
    expected = 6 * weights + 12 * layers * length * d
    assert bench.flops_per_token(GPTBackbone.from_preset("gpt_tiny"), length) == expected
    d, ff, layers, vocab, length = 256, 1024, 4, 8192, 128  # BENCHMARKS.md's size
    bench_expected = 6 * (layers * (4 * d * d + 2 * d * ff) + vocab * d) + 12 * layers * length * d
    assert bench.task_flops_per_token("gpt", length) == bench_expected


def test_flops_per_token_counts_grouped_query_attention_and_swiglu():
    # llama_tiny: 4 query heads of 16, 2 key/value heads, SwiGLU (gate, up, down), untied head.
    d, heads, kv_heads, head_size, ff, layers, vocab, length = 64, 4, 2, 16, 176, 2, 1024, 16
    attention = d * heads * head_size + 2 * d * kv_heads * head_size + heads * head_size * d
    weights = layers * (attention + 3 * d * ff) + vocab * d
    expected = 6 * weights + 12 * layers * length * heads * head_size
    assert bench.flops_per_token(GPTBackbone.from_preset("llama_tiny"), length) == expected


def test_masked_lm_flops_count_the_head_at_masked_positions_only():
    d, ff, layers, vocab, length, predicted = 64, 128, 2, 1024, 16, 3
    body = 6 * layers * (4 * d * d + 2 * d * ff) + 12 * layers * length * d
    head = 6 * (vocab * d + d * d) * predicted / length  # transform and tied projection
    backbone = BertBackbone.from_preset("bert_tiny")
    assert bench.flops_per_token(backbone, length, predicted) == pytest.approx(body + head)
    with pytest.raises(ValueError, match="sequence_length"):
        bench.flops_per_token(backbone, 0)
    with pytest.raises(TypeError, match="backbone"):
        bench.flops_per_token("bert_tiny", length)


@pytest.mark.parametrize("task", ["gpt", "bert"])
def test_synthetic_batch_keys_shapes_and_ranges(task):
    x, y = bench.synthetic_batch(task, batch_size=3, sequence_length=20, vocabulary_size=50)
    ids = x["token_ids"].numpy()
    assert ids.shape == (3, 20) and ids.min() >= 1 and ids.max() < 50
    if task == "gpt":
        assert set(x) == {"token_ids", "padding_mask"} and y.shape == (3, 20)
    else:
        positions = x["mask_positions"].numpy()
        assert set(x) == {"token_ids", "segment_ids", "padding_mask", "mask_positions"}
        assert positions.shape == (3, 3) and y.shape == (3, 3)
        assert all(len(set(row)) == 3 for row in positions)
        np.testing.assert_array_equal(y.numpy(), np.take_along_axis(ids, positions, axis=1))


def test_synthetic_batch_rejects_unknown_task():
    with pytest.raises(ValueError, match="`task`"):
        bench.synthetic_batch("t5")


def test_interleaved_times_alternates_order_and_warms_up():
    calls = []

    def timer(name):
        return lambda: calls.append(name) or float(len(calls))

    times = bench.interleaved_times({"a": timer("a"), "b": timer("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert times == {"a": [3.0, 6.0, 7.0], "b": [4.0, 5.0, 8.0]}


def test_replace_section_replaces_appends_and_keeps_other_sections():
    text = "# T\n\n## A\nold\n\n## B\nb\n"
    assert bench.replace_section(text, "## A", "new") == "# T\n\n## A\nnew\n\n## B\nb\n"
    assert bench.replace_section(text, "## B", "c") == "# T\n\n## A\nold\n\n## B\nc\n"
    assert bench.replace_section(text, "## C", "c") == text + "\n## C\nc\n"


def test_markdown_table():
    table = bench.markdown_table(["x", "y"], [[1, "a"]])
    assert table == "| x | y |\n|---|---|\n| 1 | a |"


def test_every_benchmark_command_has_the_module_interface():
    from tools.benchmark import commands

    modules = commands()
    assert {"train", "generate", "tokenize"} <= set(modules)
    for name, module in modules.items():
        assert isinstance(module.DESCRIPTION, str) and module.DESCRIPTION, name
        assert callable(module.add_arguments) and callable(module.run), name


def test_interleaved_results_keep_each_timers_last_result():
    from tools.benchmarks import interleaved_results

    calls = []

    def timer(name):
        def run():
            calls.append(name)
            return len(calls) / 10, f"{name}{len(calls)}"

        return run

    times, results = interleaved_results({"a": timer("a"), "b": timer("b")}, rounds=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a"]  # warm-up, then A B, then B A
    assert times == {"a": [0.3, 0.6], "b": [0.4, 0.5]}
    assert results == {"a": "a6", "b": "b5"}


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("bfloat16", 2)])
def test_decode_bytes_per_step_counts_weights_and_grouped_kv_cache(dtype, size):
    # llama_tiny: RoPE (no position table), 2 layers, 2 key/value heads of 16.
    gpt = GPTBackbone.from_preset("llama_tiny", dtype=dtype)
    layers, kv_heads, head_size, batch, length = 2, 2, 16, 3, 40
    cache = 2 * layers * batch * kv_heads * length * head_size * size  # keys and values
    assert bench.decode_bytes_per_step(gpt, batch, length) == gpt.count_params() * size + cache


def test_decode_profile_counts_the_loop_body_ops_per_step():
    import tensorflow as tf

    from tools.benchmarks.decode_profile import op_type_times

    @tf.function
    def loop(x):  # per step: one MatMul, one AddV2 (i + 1)
        return tf.while_loop(lambda i, x: i < 5, lambda i, x: (i + 1, tf.matmul(x, x)), (0, x))[1]

    x = tf.eye(4)
    loop(x)
    profile = op_type_times(lambda: loop(x).numpy(), steps=5)
    assert profile["MatMul"][1] == 1 and profile["MatMul"][0] > 0
