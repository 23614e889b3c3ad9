"""Supervised fine-tuning: prompt masking, chat templates, packing, JSONL records, whole runs.

Token ids, labels and weights are written out by hand on a tiny WordPiece vocabulary.
"""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from pipelines.sft import read_sft_jsonl, sft_dataset_fn
from tests.test_presets import byte_level_vocabulary, hf_gpt2_folder, write_byte_level_tokenizer
from tfllm.config import RunConfig
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.models import CausalLM, GPTBackbone
from tfllm.models.preset_io import PresetParts, save_preset
from tfllm.preprocessing import CausalLMPreprocessor, ChatTemplate, pack_documents
from tfllm.preprocessing.chat import as_conversations
from tfllm.pretraining import build_model
from tools import train

# fmt: off
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "#", "user", "assistant", ":",   # 0-7
    "system", "a", "b", "c", "d", "what", "is",                          # 8-14
]
# fmt: on
PAD, CLS, SEP = 0, 2, 3
A, B, C, D = 9, 10, 11, 12
USER = [4, 4, 4, 5, 7]  # "### User:" (then the content; "\n" is whitespace)
ASSISTANT = [4, 4, 4, 6, 7]  # "### Assistant:"


@pytest.fixture(scope="module")
def tokenizer():
    from tfllm.tokenizers import WordPieceTokenizer

    return WordPieceTokenizer(VOCAB)


def as_lists(outputs):
    return tf.nest.map_structure(lambda t: np.asarray(t).tolist(), outputs)


# --- prompt masking --------------------------------------------------------------------


def test_prompt_tokens_weigh_zero_and_the_end_token_one(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 6)  # no template: keras-hub's layout
    x, y, w = as_lists(preprocessor({"prompts": ["a b", "c"], "responses": ["c", "a b d"]}))
    # [CLS] a b | c [SEP] and [CLS] c | a b d [SEP]: labels are the next tokens.
    assert x["token_ids"] == [[CLS, A, B, C, SEP, PAD], [CLS, C, A, B, D, SEP]]
    assert x["padding_mask"] == [[1, 1, 1, 1, 1, 0], [1] * 6]
    assert y == [[A, B, C, SEP, PAD, PAD], [C, A, B, D, SEP, PAD]]
    assert w == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]]
    x, y, w = as_lists(preprocessor({"prompts": "a b", "responses": "c"}))  # unbatched
    assert x["token_ids"] == [CLS, A, B, C, SEP, PAD] and w == [0, 0, 1, 1, 0, 0]


def test_long_examples_lose_the_prompt_start_then_the_end(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 5)  # at most 6 tokens
    # [CLS] a b c d | a b [SEP]: two too many, taken from the prompt's start.
    x, y, w = as_lists(preprocessor({"prompts": ["a b c d"], "responses": ["a b"]}))
    assert x["token_ids"] == [[CLS, C, D, A, B]] and y == [[C, D, A, B, SEP]]
    assert w == [[0, 0, 1, 1, 1]]
    # [CLS] a | b c d a b c [SEP]: the prompt goes, then the end (its end token with it).
    x, y, w = as_lists(preprocessor({"prompts": ["a"], "responses": ["b c d a b c"]}))
    assert x["token_ids"] == [[CLS, B, C, D, A]] and y == [[B, C, D, A, B]]
    assert w == [[1, 1, 1, 1, 1]]


# --- chat template ---------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "d"},
    {"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"},
    {"role": "user", "content": "c"},
    {"role": "assistant", "content": "a b"},
]


def test_chat_template_renders_as_documented(tokenizer):
    template = ChatTemplate()
    assert template.render(CONVERSATION) == (
        "d\n\n### User:\na\n\n### Assistant:\nb### User:\nc\n\n### Assistant:\na b"
    )
    assert template.generation_prompt("c") == "### User:\nc\n\n### Assistant:\n"
    preprocessor = CausalLMPreprocessor(tokenizer, 32, chat_template=template)
    x, y, w = as_lists(
        preprocessor(
            {
                "roles": tf.ragged.constant([[m["role"] for m in CONVERSATION]]),
                "contents": tf.ragged.constant([[m["content"] for m in CONVERSATION]]),
            }
        )
    )
    ids = [CLS, D, *USER, A, *ASSISTANT, B, SEP, *USER, C, *ASSISTANT, A, B, SEP]
    token_weights = [0] * (2 + 6 + 5) + [1, 1] + [0] * (6 + 5) + [1, 1, 1]  # both answers
    assert x["token_ids"][0] == ids + [PAD] * (32 - len(ids))
    assert y[0] == ids[1:] + [PAD] * (33 - len(ids))
    assert w[0] == token_weights[1:] + [0] * (33 - len(ids))
    # The prompt of generation is the training conversation's, up to the answer.
    prompt = preprocessor.generate_preprocess(["a"], sequence_length=16)
    real = np.asarray(prompt["padding_mask"][0]).astype(bool)
    assert np.asarray(prompt["token_ids"][0])[real].tolist() == [CLS, *USER, A, *ASSISTANT]


def test_a_string_prompt_too_long_keeps_its_end(tokenizer):
    """The tokens next to the answer (the assistant prefix) are kept, as for conversations."""
    plain = CausalLMPreprocessor(tokenizer, 16)
    x = as_lists(plain.generate_preprocess(["a b c d a b", "c"], sequence_length=4))
    assert x["token_ids"] == [[CLS, D, A, B], [CLS, C, PAD, PAD]]
    assert x["padding_mask"] == [[1, 1, 1, 1], [1, 1, 0, 0]]
    chat = CausalLMPreprocessor(tokenizer, 16, chat_template=ChatTemplate())
    x = as_lists(chat.generate_preprocess("a b c", sequence_length=8))  # 13 tokens + [CLS]
    assert x["token_ids"] == [CLS, B, C, *ASSISTANT] and x["padding_mask"] == [1] * 8


def test_prompt_response_pairs_are_user_and_assistant_messages(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 16, chat_template=ChatTemplate())
    pair = preprocessor({"prompts": ["a"], "responses": ["b c"]})
    chat = preprocessor({"roles": [["user", "assistant"]], "contents": [["a", "b c"]]})
    for got, want in zip(tf.nest.flatten(pair), tf.nest.flatten(chat), strict=True):
        np.testing.assert_array_equal(got, want)


def test_template_travels_with_the_model(tokenizer, tmp_path):
    template = ChatTemplate(user="Q: {content}\n", assistant="A: {content}")
    preprocessor = CausalLMPreprocessor(tokenizer, 16, chat_template=template)
    rebuilt = CausalLMPreprocessor.from_config(preprocessor.get_config())
    assert rebuilt.chat_template == template
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCAB))
    lm = CausalLM(backbone, preprocessor, compile=False)
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert loaded.preprocessor.chat_template == template
    for got, want in zip(
        tf.nest.flatten(loaded.preprocessor.generate_preprocess(["a b"])),
        tf.nest.flatten(preprocessor.generate_preprocess(["a b"])),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


# --- packing ---------------------------------------------------------------------------


def test_packed_examples_keep_their_weights(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 9)
    examples = tf.data.Dataset.from_tensor_slices(
        {"prompts": ["a", "c d", "b"], "responses": ["b", "a", "c"]}
    )
    windows = as_lists(list(preprocessor.pack(examples).as_numpy_iterator()))
    # [CLS] a | b [SEP] and [CLS] c d | a [SEP] fill the first window (9 tokens); the third
    # does not fit after them and starts the next one: examples are never split.
    (x1, y1, w1), (x2, y2, w2) = windows
    assert x1["token_ids"] == [CLS, A, B, SEP, CLS, C, D, A, SEP]
    assert x1["segment_ids"] == [1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert y1 == [A, B, SEP, CLS, C, D, A, SEP, PAD]
    assert w1 == [0, 1, 1, 0, 0, 0, 1, 1, 0]  # no label across examples, none on prompts
    assert x2["token_ids"] == [CLS, B, C, SEP] + [PAD] * 5
    assert x2["segment_ids"] == [1, 1, 1, 1] + [0] * 5
    assert y2[:3] == [B, C, SEP] and w2 == [0, 1, 1] + [0] * 6


@pytest.mark.parametrize("packed", [True, False])
def test_a_checkpointed_sft_iterator_resumes_with_the_same_batches(tokenizer, packed, tmp_path):
    """Shuffled epochs of conversations: the position is saved (the Trainer used to warn
    that it could not be) and a new pipeline restored from it goes on with the same batches."""
    config = RunConfig(task="causal_lm_sft", init_from="gpt", train_files=("a.jsonl",),
                       batch_size=2, sequence_length=12, seed=3, shuffle_buffer=3,
                       packed=packed)  # fmt: skip
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                     for p, r in PAIRS]  # fmt: skip

    def batches():
        preprocessor = CausalLMPreprocessor(tokenizer, 12, chat_template=ChatTemplate())
        return iter(sft_dataset_fn(config, preprocessor, conversations)(
            tf.distribute.InputContext()))  # fmt: skip

    iterator = batches()
    for _ in range(3):  # into the second epoch
        next(iterator)
    path = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "ckpt" / "input"))
    expected = [as_lists(next(iterator)) for _ in range(4)]
    resumed = batches()
    tf.train.Checkpoint(data=resumed).restore(path).assert_consumed()
    assert [as_lists(next(resumed)) for _ in range(4)] == expected


def test_pack_documents_carries_weights_across_windows():
    documents = tf.data.Dataset.from_tensor_slices(
        (tf.ragged.constant([[5, 6, 7], [8, 9]]), tf.ragged.constant([[0.0, 1, 1], [0.0, 1]]))
    )
    windows = as_lists(list(pack_documents(documents, 3).as_numpy_iterator()))
    assert [(x["token_ids"], y, w) for x, y, w in windows] == [
        ([5, 6, 7], [6, 7, 8], [1, 1, 0]),
        ([8, 9, 0], [9, 0, 0], [1, 0, 0]),
    ]
    with pytest.raises(tf.errors.InvalidArgumentError, match="longer than 2 tokens"):
        list(pack_documents(documents, 2, split_documents=False))


def packed_row(tokenizer, backbone):
    """A causal LM on `backbone` and one packed window of three examples (+ its examples)."""
    template = ChatTemplate(user="user: {content}", assistant="assistant: {content}")
    preprocessor = CausalLMPreprocessor(tokenizer, 28, chat_template=template)
    pairs = {"prompts": ["a b", "c", "d a"], "responses": ["c", "d d", "b"]}  # 9 tokens each
    x, y, w = next(iter(preprocessor.pack(tf.data.Dataset.from_tensor_slices(pairs)).batch(1)))
    assert set(x["segment_ids"][0].numpy()) == {0, 1, 2, 3}  # all three in the row
    return CausalLM(backbone), preprocessor, pairs, (x, y, w)


@pytest.mark.parametrize(
    "preset, overrides",
    [("gpt_tiny", {}), ("gpt_tiny", {"position_embedding": "sinusoidal"}), ("llama_tiny", {})],
    ids=["learned", "sinusoidal", "rope"],
)
def test_a_packed_example_gives_the_logits_it_gives_alone(tokenizer, preset, overrides):
    # Positions restart at 0 for every example of a packed row, and examples do not
    # attend to each other: each one's logits are those of the example alone.
    backbone = GPTBackbone.from_preset(
        preset, vocabulary_size=len(VOCAB), packed_sequences=True, **overrides
    )
    lm, preprocessor, pairs, (x, y, w) = packed_row(tokenizer, backbone)
    packed = lm(x).numpy()[0]
    segments = x["segment_ids"][0].numpy()
    # The same weights in a backbone without packing, one unpadded example at a time.
    unpacked = GPTBackbone.from_config({**backbone.get_config(), "packed_sequences": False})
    unpacked.set_weights(backbone.get_weights())
    alone_lm = CausalLM(unpacked)
    alone_x, alone_y, alone_w = preprocessor(pairs)
    for example in range(3):
        length = int(np.sum(segments == example + 1))
        ids = alone_x["token_ids"].numpy()[example : example + 1, :length]
        alone = alone_lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}).numpy()[0]
        np.testing.assert_allclose(packed[segments == example + 1], alone, atol=1e-5, rtol=0)
    # Hence the same loss, weighted on the responses only, packed or not.
    alone_x = dict(alone_x, segment_ids=alone_x["padding_mask"])
    loss = SparseCategoricalCrossentropy(reduction="mean_with_sample_weight")
    alone_loss = loss(alone_y, lm(alone_x), sample_weight=alone_w)
    np.testing.assert_allclose(loss(y, lm(x), sample_weight=w), alone_loss, rtol=1e-5)


# --- errors ----------------------------------------------------------------------------


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "a"}, "needs string `prompt` and `response`"),
        ({"question": "a", "answer": "b"}, r"Received keys: \['answer', 'question'\]"),
        ({"prompt": "a", "response": "  "}, "`response` is empty"),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
        ({"messages": [{"role": "bot", "content": "a"}]}, "message 0 must be"),
        ({"messages": [{"role": "user", "content": 3}]}, "message 0 must be"),
        ({"messages": "hi"}, "non-empty list"),
        ({"messages": [{"role": "assistant", "content": ""}]}, "assistant message is empty"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_records_name_their_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "response": "b"}, "", record])
    with pytest.raises(ValueError, match=message) as error:
        read_sft_jsonl(path)
    assert f"{path}:3:" in str(error.value)


def test_in_graph_errors(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 8, chat_template=ChatTemplate())
    with pytest.raises(tf.errors.InvalidArgumentError, match="must hold text; one is empty"):
        preprocessor({"prompts": ["a", "b"], "responses": ["c", " "]})
    dataset = tf.data.Dataset.from_tensor_slices({"prompts": ["a"], "responses": [""]})
    with pytest.raises(tf.errors.InvalidArgumentError, match="one is empty"):
        list(dataset.batch(1).map(preprocessor))
    with pytest.raises(tf.errors.InvalidArgumentError, match="role must be one of"):
        preprocessor({"roles": [["user", "robot"]], "contents": [["a", "b"]]})
    with pytest.raises(ValueError, match=r"Received: \['prompts', 'response'\]"):
        preprocessor({"prompts": ["a"], "response": ["b"]})


def test_templates_that_drop_or_repeat_the_content_are_refused():
    with pytest.raises(ValueError, match="`user` must hold `{content}` exactly once"):
        ChatTemplate(user="### User:\n")
    with pytest.raises(ValueError, match="`assistant` must hold"):
        ChatTemplate(assistant="{content} {content}")
    with pytest.raises(TypeError, match="`system` must be a str"):
        ChatTemplate(system=None)
    assert ChatTemplate(user="{{json}}: {content}").parts("user") == ("{{json}}: ", "")


def test_run_config_checks_sft_settings(tmp_path):
    base = dict(task="causal_lm_sft", init_from=str(tmp_path), train_files=("a.jsonl",))
    config = RunConfig(**base, chat_template={"user": "Q: {content}\n"})
    assert config.chat_template == {**ChatTemplate().get_config(), "user": "Q: {content}\n"}
    assert RunConfig.from_dict(config.to_dict()) == config  # stored whole, loads the same
    with pytest.raises(ValueError, match="`user` must hold"):
        RunConfig(**base, chat_template={"user": "Q:"})
    with pytest.raises(ValueError, match=r"keys are .*Received: \['bot'\]"):
        RunConfig(**base, chat_template={"bot": "{content}"})
    with pytest.raises(ValueError, match="needs `init_from` and `train_files`"):
        RunConfig(task="causal_lm_sft", train_files=("a.jsonl",))
    with pytest.raises(ValueError, match="`task=causal_lm` does not use them"):
        RunConfig(task="causal_lm", packed=False)


# --- runs ------------------------------------------------------------------------------

# A toy task: answer the letter after the one asked about.
PAIRS = [("what is a", "b"), ("what is b", "c"), ("what is c", "d"), ("what is d", "a")]


def gpt_preset(tokenizer, folder):
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCAB), dropout=0.0)
    return save_preset(backbone, folder, tokenizer)


def sft_args(tmp_path, init_from, name, **overrides):
    records = [{"prompt": p, "response": r} for p, r in PAIRS]
    records.append({"messages": [{"role": "system", "content": "a"}, *records_as_chat()]})
    data = write_jsonl(tmp_path / "train.jsonl", records)
    values = dict(
        task="causal_lm_sft", init_from=str(init_from), train_files=str(data),
        output_dir=str(tmp_path / "runs"), name=name, sequence_length=32, batch_size=4,
        steps=60, learning_rate=3e-3, warmup_steps=0, log_every=20, checkpoint_every=60,
        schedule="constant",
    )  # fmt: skip
    values.update(overrides)
    return ["--quiet", *(f"--{k}={v}" for k, v in values.items())]


def records_as_chat():
    return [
        {"role": "user", "content": PAIRS[0][0]},
        {"role": "assistant", "content": PAIRS[0][1]},
        {"role": "user", "content": PAIRS[1][0]},
        {"role": "assistant", "content": PAIRS[1][1]},
    ]


def test_sft_run_learns_a_toy_task_and_answers_raw_prompts(tokenizer, tmp_path):
    summary = train.main(sft_args(tmp_path, gpt_preset(tokenizer, tmp_path / "gpt"), "sft"))
    run = tmp_path / "runs" / "sft"
    for name in ("config.json", "tokenizer", "model.keras", "history.json", "curves.png"):
        assert (run / name).exists(), name
    history = json.loads((run / "history.json").read_text())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert summary["step"] == 60
    assert json.loads((run / "config.json").read_text())["chat_template"] == (
        ChatTemplate().get_config()
    )
    lm = keras.saving.load_model(run / "model.keras")
    assert lm.backbone.packed_sequences and lm.preprocessor.chat_template == ChatTemplate()
    answers = lm.generate([p for p, _ in PAIRS], max_length=24, strip_prompt=True)
    assert answers == [r for _, r in PAIRS]
    # The saved model is a starting point too (its tokenizer/ beside it).
    again = sft_args(tmp_path, run / "model.keras", "again", steps=2, log_every=1)
    assert train.main([*again, "--checkpoint_every=2"])["step"] == 2


def test_lora_sft_run_trains_the_adapters_only_and_saves_them_merged(tokenizer, tmp_path):
    base_folder = gpt_preset(tokenizer, tmp_path / "gpt")
    summary = train.main(sft_args(tmp_path, base_folder, "lora", lora_rank=4, steps=4,
                                  log_every=2, checkpoint_every=4))  # fmt: skip
    assert summary["step"] == 4
    run = tmp_path / "runs" / "lora"
    merged = keras.saving.load_model(run / "model.keras")
    assert merged.backbone.lora_rank is None  # exported without adapters
    # The base model plus the saved adapters, unmerged, gives the merged model's logits.
    unmerged = CausalLM.from_preset(base_folder)
    unmerged.backbone.load_lora_weights(run / "adapters.lora.h5")
    ids = np.random.default_rng(0).integers(5, len(VOCAB), (2, 8)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    packed = {**x, "segment_ids": np.ones_like(ids)}  # the run's backbone is packed: one example
    np.testing.assert_allclose(merged(packed), unmerged(x), atol=1e-5)
    base = CausalLM.from_preset(base_folder)
    assert not np.allclose(merged(packed), base(x), atol=1e-4)  # the adapters did train
    # Everything outside the adapted projections is the starting point's.
    for name in ("token_embedding", "position_embedding"):
        a, b = (m.backbone.get_layer(name).get_weights() for m in (merged, base))
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_sft_run_without_packing_from_a_hugging_face_gpt2(tmp_path):
    vocabulary = byte_level_vocabulary()
    source = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=64, max_sequence_length=64,
    )  # fmt: skip
    folder = hf_gpt2_folder(tmp_path / "gpt2", source)
    write_byte_level_tokenizer(folder)
    args = sft_args(tmp_path, folder, "gpt2_sft", packed="false", steps=2, log_every=1)
    summary = train.main([*args, "--checkpoint_every=2"])
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    lm = keras.saving.load_model(tmp_path / "runs" / "gpt2_sft" / "model.keras")
    assert not lm.backbone.packed_sequences
    eos = lm.preprocessor.end_token_id  # <|endoftext|> closes responses, also with BPE
    _, y, w = lm.preprocessor({"prompts": ["hello"], "responses": ["world"]})
    assert y.numpy()[0][w.numpy()[0] > 0][-1] == eos


def test_python_api_fits_prompts_responses_and_conversations(tokenizer, tmp_path):
    preprocessor = CausalLMPreprocessor(tokenizer, 32, chat_template=ChatTemplate())
    lm = CausalLM.from_preset(gpt_preset(tokenizer, tmp_path / "gpt"), preprocessor=preprocessor)
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    history = lm.fit({"prompts": prompts, "responses": responses}, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    chats = {"roles": [["user", "assistant"]] * 4, "contents": [list(pair) for pair in PAIRS]}
    lm.fit(chats, epochs=1, batch_size=2, verbose=0)
    assert lm.generate("what is a", max_length=20).startswith("# # # user : what is a")


def test_python_api_fit_loss_is_the_mean_over_response_tokens(tokenizer):
    preprocessor = CausalLMPreprocessor(tokenizer, 12, chat_template=ChatTemplate())
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCAB), dropout=0.0)
    lm = CausalLM(backbone, preprocessor=preprocessor)
    lm.compile(optimizer=keras.optimizers.SGD(0.0))  # the loss of the starting weights
    # Responses of 1 and 4 tokens (+ end token), prompts and padding of other lengths:
    # dividing by all labels, by rows or by response tokens give different numbers.
    data = {"prompts": ["a b", "d"], "responses": ["a", "b c d a"]}
    history = lm.fit(data, batch_size=2, shuffle=False, verbose=0).history
    x, y, w = preprocessor(data)
    logits = lm(x).numpy().astype(np.float64)  # (B, T, V)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, y.numpy()[..., None], axis=-1)[..., 0]
    w = w.numpy().astype(np.float64)
    assert w.sum() == 2 + 5  # response tokens and their end tokens
    expected = (w * token_loss).sum() / w.sum()
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert (w * token_loss).sum() / w.size < 0.7 * expected  # Keras's default reduction
    # The `causal_lm_sft` run compiles its CausalLM with the same loss.
    config = RunConfig(
        task="causal_lm_sft", init_from="gpt", train_files=("train.jsonl",), packed=False
    )
    start = PresetParts("tfllm", backbone, tokenizer, None)
    run_model = build_model(config, len(VOCAB), start=start)
    run_loss = run_model.evaluate(dict(x), y, sample_weight=w, verbose=0, return_dict=True)
    assert run_loss["loss"] == pytest.approx(expected, rel=1e-5)


# --- generating from a chat ------------------------------------------------------------


def chat_lm(tokenizer):
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCAB), dropout=0.0)
    return CausalLM(backbone, CausalLMPreprocessor(tokenizer, 40, chat_template=ChatTemplate()))


def test_generate_answers_a_conversation_rendered_as_by_hand(tokenizer):
    keras.utils.set_random_seed(1)
    lm = chat_lm(tokenizer)
    conversation = CONVERSATION[:4]  # system, user, assistant, user: the reply comes next
    options = dict(max_length=40, stop_token_ids=None)  # a reply to the last position
    reply = lm.generate(conversation, **options)
    # By hand: each message in the template's format, tokenized on its own, the end token
    # after the assistant's, then the assistant prefix; generated from as token ids.
    template = lm.preprocessor.chat_template
    first = template.render(conversation[:3])
    second = template.render(conversation[3:]) + template.parts("assistant")[0]
    ids = [CLS, *tokenizer.tokenize(first).numpy(), SEP, *tokenizer.tokenize(second).numpy()]
    assert ids == [CLS, D, *USER, A, *ASSISTANT, B, SEP, *USER, C, *ASSISTANT]
    prompt = {"token_ids": [ids + [PAD] * (40 - len(ids))], "padding_mask": [[1] * len(ids)]}
    prompt["padding_mask"][0] += [0] * (40 - len(ids))
    new = lm.generate(prompt, strip_prompt=True, **options)
    assert reply == lm.preprocessor.generate_postprocess(new)[0] and reply
    # A batch of conversations; a one-message one is the string prompt of its user.
    single = [{"role": "user", "content": "c"}]
    replies = lm.generate([conversation, single], **options)
    assert replies == [reply, lm.generate("c", strip_prompt=True, **options)]
    # A conversation too long for `max_length` keeps its end: [CLS] + the last 11 tokens.
    x = lm.preprocessor.generate_preprocess(as_conversations(conversation)[0], 12)
    assert np.asarray(x["token_ids"][0]).tolist() == [CLS, *ids[-11:]]


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ([{"role": "user"}], ValueError, "`inputs` message 0 must be a dict with `role` and"),
        ([{"role": "bot", "content": "a"}], ValueError, r"`role` must be one of .* 'bot'"),
        (
            [[{"role": "user", "content": "a"}], [{"content": "a"}]],
            ValueError,
            r"`inputs\[1\]` message 0 must be a dict",
        ),
        ([[]], ValueError, r"`inputs\[0\]` must be a non-empty list of messages"),
        ([{"role": "user", "content": 3}], TypeError, "`content` must be a str. Received: 3"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            ValueError,
            "ends with an assistant message",
        ),
        (
            [{"role": "assistant", "content": " "}, {"role": "user", "content": "a"}],
            ValueError,
            "message 0: an assistant message is empty",
        ),
    ],
)
def test_generate_rejects_bad_messages(tokenizer, inputs, error, message):
    with pytest.raises(error, match=message):
        chat_lm(tokenizer).generate(inputs, max_length=16)


def test_generate_from_a_chat_needs_a_preprocessor():
    lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(VOCAB)))
    with pytest.raises(ValueError, match="chat `inputs` need a `preprocessor`"):
        lm.generate([{"role": "user", "content": "a"}], max_length=8, stop_token_ids=None)
