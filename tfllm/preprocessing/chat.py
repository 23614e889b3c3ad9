r"""Chat templates: conversations as token ids, with loss weights on the answers only.

A conversation is a list of messages `{"role", "content"}`, roles `system`, `user` and
`assistant`; a prompt / response pair is the conversation `[user: prompt, assistant:
response]`. `ChatTemplate` formats each message; `conversation_ids` tokenizes a batch of
conversations in the TensorFlow graph and weights, for the loss, the assistant messages'
contents (with what follows `{content}` in the assistant format) and the end token that
closes each of them. Everything before an assistant content (system and user messages,
the assistant prefix) is what the model is given: weight 0.
"""

import tensorflow as tf

ROLES = ("system", "user", "assistant")
PLACEHOLDER = "{content}"


class ChatTemplate:
    r"""How each message of a conversation is written: its role's format, `{content}` filled.

    A conversation is its formatted messages, concatenated; the end token follows every
    assistant message. Each format holds `{content}` exactly once (other braces are kept
    as they are); the text before it in the assistant format is the prefix a prompt ends
    with at generation time.

    Args:
        system: format of system messages. Default `"{content}\n\n"`.
        user: format of user messages (and of the prompt of a prompt / response pair).
            Default `"### User:\n{content}\n\n"`.
        assistant: format of assistant messages (the response). Default
            `"### Assistant:\n{content}"`: the response is the content itself, then the
            end token.

    Example:
    >>> template = ChatTemplate()
    >>> template.render([{"role": "user", "content": "2+2?"},
    ...                  {"role": "assistant", "content": "4"}])
    '### User:\n2+2?\n\n### Assistant:\n4'
    >>> template.generation_prompt("2+2?")  # what `generate("2+2?")` continues
    '### User:\n2+2?\n\n### Assistant:\n'
    """

    def __init__(
        self,
        system: str = "{content}\n\n",
        user: str = "### User:\n{content}\n\n",
        assistant: str = "### Assistant:\n{content}",
    ):
        for name, value in (("system", system), ("user", user), ("assistant", assistant)):
            if not isinstance(value, str):
                raise TypeError(f"`{name}` must be a str. Received: {value!r}")
            if value.count(PLACEHOLDER) != 1:
                raise ValueError(
                    f"`{name}` must hold `{PLACEHOLDER}` exactly once (where the message's "
                    f"text goes), else the message is lost or repeated. Received: {value!r}"
                )
        self.system = system
        self.user = user
        self.assistant = assistant

    def parts(self, role: str) -> tuple[str, str]:
        """`(prefix, suffix)`: the text before and after `{content}` in `role`'s format."""
        if role not in ROLES:
            raise ValueError(f"`role` must be one of {ROLES}. Received: {role!r}")
        prefix, suffix = getattr(self, role).split(PLACEHOLDER)
        return prefix, suffix

    def render(self, messages: list[dict]) -> str:
        """The text of a conversation (special tokens, such as the end tokens, left out)."""
        texts = []
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(
                    f"A message is a dict with `role` and `content`. Received: {message!r}"
                )
            prefix, suffix = self.parts(message["role"])
            texts.append(prefix + message["content"] + suffix)
        return "".join(texts)

    def generation_prompt(self, prompt: str) -> str:
        """The text a prompt becomes for generation: its user message, the assistant prefix."""
        return self.render([{"role": "user", "content": prompt}]) + self.parts("assistant")[0]

    def get_config(self) -> dict:
        return {"system": self.system, "user": self.user, "assistant": self.assistant}

    @classmethod
    def from_config(cls, config: dict) -> "ChatTemplate":
        return cls(**config)

    def __eq__(self, other) -> bool:
        return isinstance(other, ChatTemplate) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        return f"ChatTemplate({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def as_conversations(inputs, name: str = "inputs") -> tuple[dict, bool] | None:
    """Chat messages -> `({"roles", "contents"} ragged (B, (n)) strings, single)`, else None.

    `inputs` is one conversation (a list of `{"role", "content"}` dicts) or a batch of
    them (a list of such lists); anything else (strings, token dicts) gives None. The
    conversation is to be answered: it must not end with an assistant message.

    Example:
    >>> x, single = as_conversations([{"role": "user", "content": "2+2?"}])
    >>> x["roles"].to_list(), single
    ([[b'user']], True)
    """
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return None
    if isinstance(inputs[0], dict):
        conversations, single = [inputs], True
    elif isinstance(inputs[0], (list, tuple)):
        conversations, single = inputs, False
    else:
        return None
    roles, contents = [], []
    for i, conversation in enumerate(conversations):
        where = f"`{name}`" if single else f"`{name}[{i}]`"
        if not isinstance(conversation, (list, tuple)) or not conversation:
            raise ValueError(
                f"{where} must be a non-empty list of messages `{{'role', 'content'}}`. "
                f"Received: {conversation!r}"
            )
        for j, message in enumerate(conversation):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(
                    f"{where} message {j} must be a dict with `role` and `content`. "
                    f"Received: {message!r}"
                )
            role, content = message["role"], message["content"]
            if role not in ROLES:
                raise ValueError(
                    f"{where} message {j}: `role` must be one of {ROLES}. Received: {role!r}"
                )
            if not isinstance(content, str):
                raise TypeError(
                    f"{where} message {j}: `content` must be a str. Received: {content!r}"
                )
            if role == "assistant" and not content.strip():
                raise ValueError(f"{where} message {j}: an assistant message is empty.")
        if conversation[-1]["role"] == "assistant":
            raise ValueError(
                f"{where} ends with an assistant message: there is nothing to reply to. "
                f"Received: {conversation[-1]!r}"
            )
        roles.append([message["role"] for message in conversation])
        contents.append([message["content"] for message in conversation])
    x = {"roles": tf.ragged.constant(roles), "contents": tf.ragged.constant(contents)}
    return x, single


# Prompt + response written one after the other: keras-hub's `{"prompts", "responses"}`.
PLAIN_TEMPLATE = ChatTemplate(system=PLACEHOLDER, user=PLACEHOLDER, assistant=PLACEHOLDER)


def _by_role(roles: tf.Tensor, texts: dict) -> tf.Tensor:
    """`(M,)` roles -> `(M,)` strings: `texts[role]` for each."""
    return tf.where(
        roles == "system",
        texts["system"],
        tf.where(roles == "user", texts["user"], texts["assistant"]),
    )


def check_messages(roles: tf.Tensor, contents: tf.Tensor) -> list:
    """In-graph checks of `(M,)` messages: known roles, no empty assistant content."""
    known = tf.reduce_any(tf.stack([roles == role for role in ROLES]), axis=0)
    empty = (roles == "assistant") & (tf.strings.length(tf.strings.strip(contents)) == 0)
    return [
        tf.debugging.assert_equal(
            tf.reduce_all(known), True, message=f"Every message's role must be one of {ROLES}."
        ),
        tf.debugging.assert_equal(
            tf.reduce_any(empty),
            False,
            message="Every response (assistant message) must hold text; one is empty.",
        ),
    ]


def conversation_ids(
    tokenizer, template: ChatTemplate, roles, contents, eos_token_id: int
) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """Ragged `(B, (n))` string roles and contents -> ids int32 and weights float32 `(B, (L))`.

    Each message is tokenized apart from the others: a system or user message whole; an
    assistant message as its prefix (weight 0), then its content and suffix (weight 1),
    then `eos_token_id` (weight 1). A prompt therefore tokenizes the same alone (at
    generation) as in a training conversation. `weights[t]` is the loss weight of
    predicting token `t`. Unknown roles and empty responses fail with
    `InvalidArgumentError`.
    """
    flat_roles, flat_contents = roles.flat_values, contents.flat_values  # (M,) messages
    with tf.control_dependencies(check_messages(flat_roles, flat_contents)):
        flat_contents = tf.identity(flat_contents)
    assistant = flat_roles == "assistant"
    prefix = _by_role(flat_roles, {role: template.parts(role)[0] for role in ROLES})
    suffix = _by_role(flat_roles, {role: template.parts(role)[1] for role in ROLES})
    given = tf.where(assistant, prefix, tf.strings.join([prefix, flat_contents, suffix]))
    answer = tf.where(assistant, tf.strings.join([flat_contents, suffix]), "")

    def tokenize(strings):  # (M,) -> (M, (k)) int32
        ids = tokenizer.tokenize(strings).with_row_splits_dtype(tf.int64)
        return tf.cast(ids, tf.int32)

    given_ids, answer_ids = tokenize(given), tokenize(answer)
    end_ids = tf.RaggedTensor.from_row_lengths(  # (M, (0 or 1)): the end of each answer
        tf.fill([tf.reduce_sum(tf.cast(assistant, tf.int32))], eos_token_id),
        tf.cast(assistant, tf.int64),
    )
    ids = tf.concat([given_ids, answer_ids, end_ids], axis=1)  # (M, (k))
    weights = tf.concat(
        [
            tf.zeros_like(given_ids, tf.float32),
            tf.ones_like(answer_ids, tf.float32),
            tf.ones_like(end_ids, tf.float32),
        ],
        axis=1,
    )
    splits = roles.row_splits  # messages -> conversations, (B, (n), (k)) -> (B, (L))
    ids = tf.RaggedTensor.from_row_splits(ids, splits).merge_dims(1, 2)
    weights = tf.RaggedTensor.from_row_splits(weights, splits).merge_dims(1, 2)
    return ids, weights


def trim_conversations(
    ids: tf.RaggedTensor, weights: tf.RaggedTensor, max_tokens: int, keep_first: int
) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """Rows of `(B, (L))` ids / weights cut to `max_tokens`, answers kept when they fit.

    A row too long first loses tokens from the start of its first prompt, just after its
    first `keep_first` tokens (BOS), up to the whole of it; then, if still too long, its
    end (an answer cut short loses its end token with it, so the model is never taught to
    stop early).
    """
    lengths = ids.row_lengths()  # (B,) int64
    positions = tf.ragged.range(lengths)  # (B, (L))
    excess = tf.maximum(lengths - max_tokens, 0)
    # The first weighted token; a row without one counts as all prompt.
    first_weighted = tf.reduce_min(
        tf.where(weights > 0, positions, positions * 0 + lengths[:, None]), axis=1
    )
    cut = tf.minimum(excess, tf.maximum(first_weighted - keep_first, 0))[:, None]  # (B, 1)
    keep = (positions < keep_first) | (
        (positions >= keep_first + cut) & (positions < cut + max_tokens)
    )
    return tf.ragged.boolean_mask(ids, keep), tf.ragged.boolean_mask(weights, keep)
