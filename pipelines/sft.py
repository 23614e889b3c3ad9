"""Supervised fine-tuning data: JSONL prompt / response and chat records -> tf.data.

One JSON object per line (blank lines are skipped, other keys ignored), of either kind:

- `{"prompt": str, "response": str}`: one exchange; the response must hold text.
- `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`: a
  conversation with at least one assistant message, none of them empty.

Both become conversations, lists of `{"role", "content"}` messages (a pair is `[user:
prompt, assistant: response]`), which `CausalLMPreprocessor` writes with its chat template
and weights on the assistant messages. Records are read and checked before training, so a
bad line fails with its file and line number at once; `sft_dataset_fn` feeds them to
`tfllm.trainer.Trainer`.
"""

import json
from collections.abc import Callable

import tensorflow as tf

from pipelines.datasets import shuffled_epochs
from tfllm.preprocessing.chat import ROLES


def _conversation(record, where: str) -> list[dict]:
    """One parsed record -> its messages; `ValueError` naming `where` (file:line)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record must be a JSON object. Received: {record!r:.80}")
    if "messages" in record:
        if "prompt" in record or "response" in record:
            raise ValueError(
                f"{where}: a record holds `messages` or `prompt`/`response`, not both."
            )
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: `messages` must be a non-empty list of messages.")
        for index, message in enumerate(messages):
            if not (
                isinstance(message, dict)
                and message.get("role") in ROLES
                and isinstance(message.get("content"), str)
            ):
                raise ValueError(
                    f"{where}: message {index} must be {{'role': one of {ROLES}, 'content': "
                    f"str}}. Received: {message!r:.80}"
                )
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if not answers:
            raise ValueError(f"{where}: the conversation has no assistant message to learn.")
        if not all(answer.strip() for answer in answers):
            raise ValueError(f"{where}: an assistant message is empty.")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(
            f"{where}: a record needs string `prompt` and `response` fields (or `messages`). "
            f"Received keys: {sorted(record)}"
        )
    if not response.strip():
        raise ValueError(f"{where}: the `response` is empty.")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def read_sft_jsonl(path) -> list[list[dict]]:
    """The conversations of one JSONL file of prompt / response or chat records.

    Example:
    >>> from pathlib import Path
    >>> _ = Path("train.jsonl").write_text('{"prompt": "2+2?", "response": "4"}\\n')
    >>> read_sft_jsonl("train.jsonl")
    [[{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]]
    """
    conversations = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error}).") from None
            conversations.append(_conversation(record, f"{path}:{number}"))
    if not conversations:
        raise ValueError(f"{path} holds no records.")
    return conversations


def read_sft_files(files: list[str]) -> list[list[dict]]:
    """The conversations of JSONL files, in file order."""
    return [c for path in files for c in read_sft_jsonl(path)]


def conversation_tensors(conversations: list[list[dict]]) -> dict[str, tf.RaggedTensor]:
    """Conversations -> `{"roles", "contents"}`: ragged `(N, (messages))` strings."""
    roles = [[m["role"] for m in c] for c in conversations]
    contents = [[m["content"] for m in c] for c in conversations]
    return {
        "roles": tf.ragged.constant(roles, tf.string),
        "contents": tf.ragged.constant(contents, tf.string),
    }


def sft_dataset_fn(
    config, preprocessor, conversations: list[list[dict]], training: bool = True
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`InputContext -> Dataset` of per-replica batches of `(x, y, sample_weight)`.

    Each input pipeline takes its share of the conversations; when `training`, they are
    shuffled with `config.seed` every epoch and repeated (validation reads them once).
    With `config.packed`, several examples share a row (`preprocessor.pack`: whole
    examples, `segment_ids` keep them apart), else one example per row.
    """
    data = conversation_tensors(conversations)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = context.get_per_replica_batch_size(config.batch_size)
        examples = tf.data.Dataset.from_tensor_slices(data)
        examples = examples.shard(context.num_input_pipelines, context.input_pipeline_id)
        if training:
            examples = shuffled_epochs(examples, config.shuffle_buffer, config.seed)
        if config.packed:
            batches = preprocessor.pack(examples).batch(batch_size, drop_remainder=training)
        else:
            batches = examples.ragged_batch(batch_size, drop_remainder=training)
            batches = batches.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
        # The iterator can be checkpointed (`tfllm.trainer.Trainer` saves its position):
        # the state outside it is the per-epoch shuffles' seed generators (each epoch is
        # seeded by its number) and the tokenizer's constant tables.
        options = tf.data.Options()
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        return batches.with_options(options).prefetch(tf.data.AUTOTUNE)

    return dataset_fn
