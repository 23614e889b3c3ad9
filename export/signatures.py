"""Serving functions of tfllm models: raw strings `(B,)` in, answers out, all in-graph.

Each `*_endpoint` builder returns `(fn, input_signature)` for `ExportArchive.add_endpoint`
(or `tf.function(fn, input_signature=...)` in process). The functions only use
TensorFlow and tensorflow-text ops, so a SavedModel of them needs nothing else.

| signature | inputs | outputs |
|---|---|---|
| `classify` | `text` | `label_ids` (B,), `labels` (B,), `probabilities` (B, C), `classes` (B, C) |
| `embed` | `text` | `pooled_output` (BERT: pooled `[CLS]`; GPT: last real token), `mean_pooled_output` (B, d) |
| `fill_mask` | `text` with `[MASK]`s | `num_masks` (B,), `mask_positions` (B, M), `token_ids`, `tokens`, `scores` (B, M, k) |
| `tag` | `text` | per word (B, W): `words`, `word_starts`, `word_ends`, `tags`, `tag_scores`; per entity (B, E): `entities`, `entity_types`, `entity_starts`, `entity_ends`; `num_words`, `num_entities` (B,) |
| `generate` | `text` | `text` (B,), `token_ids` (B, N), `num_tokens` (B,) |
| `generate_with_options` | `text`, `max_new_tokens`, `temperature`, `top_k`, `top_p`, `seed` (each (B,) or (1,)) | as `generate` |

Offsets are UTF-8 byte offsets into the input (`text[start:end]`); padded entries hold
`""`, `-1` or `0`.
"""  # noqa: E501

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.generation import PAD_ID, Sampler, _is_stop, decode
from tfllm.models import BertBackbone
from tfllm.models.gpt_classifier import pool
from tfllm.preprocessing import BertPreprocessor, TokenClassificationPreprocessor
from tfllm.preprocessing.base import pack_segments, pad, special_token_id

TEXT = tf.TensorSpec([None], tf.string, name="text")


def _float32(x):
    return tf.cast(x, tf.float32)


def classify_endpoint(model, preprocessor, label_names):
    """`classify(text)`: the most likely label of each text and all class probabilities.

    `preprocessor` turns texts `(B,)` into `model`'s inputs (`BertPreprocessor` for a
    `TextClassifier`, `GPTClassifierPreprocessor` for a `GPTClassifier`).
    """
    names = tf.constant(list(label_names))

    def classify(text):
        probabilities = tf.nn.softmax(_float32(model(preprocessor(text), training=False)))
        label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)  # (B,)
        labels = tf.gather(names, label_ids)
        # (B, C) class names beside the (B, C) probabilities: TF Serving's Classify API
        # (`:classify`) pairs them into `[label, score]`.
        classes = tf.tile(names[None], [tf.shape(probabilities)[0], 1])
        return {
            "label_ids": label_ids,
            "labels": labels,
            "probabilities": probabilities,
            "classes": classes,
        }

    return classify, [TEXT]


def embed_endpoint(backbone, preprocessor):
    """`embed(text)`: `pooled_output`, a BERT's pooled `[CLS]` vector or a GPT's vector at
    the last real token (the only one that has seen the whole text, which a
    `GPTClassifier` reads), and `mean_pooled_output`, the mean of the real tokens' vectors.

    `preprocessor`: a `BertPreprocessor` for a `BertBackbone`, a
    `GPTClassifierPreprocessor` for a `GPTBackbone`.
    """

    def embed(text):
        x = preprocessor(text)
        mask = x["padding_mask"]
        if isinstance(backbone, BertBackbone):
            outputs = backbone(x, training=False)
            sequence = _float32(outputs["sequence_output"])  # (B, T, d)
            pooled = _float32(outputs["pooled_output"])
        else:  # a GPT; a packed one reads each row as one document
            inputs = dict(x, segment_ids=mask) if backbone.packed_sequences else x
            sequence = _float32(backbone(inputs, training=False))  # (B, T, d)
            pooled = pool(sequence, mask, "last")
        return {"pooled_output": pooled, "mean_pooled_output": pool(sequence, mask, "mean")}

    return embed, [TEXT]


def fill_mask_endpoint(model, preprocessor: BertPreprocessor, top_k: int = 5):
    """`fill_mask(text)`: the `top_k` tokens and probabilities at every mask token.

    The mask token is written literally in the text (`[MASK]` for BERT vocabularies); the
    text around it is tokenized as usual. Masks cut off by `sequence_length` are dropped.
    """
    tokenizer = preprocessor.tokenizer
    mask_id = special_token_id(tokenizer, "mask_token_id")
    if mask_id is None:
        raise ValueError(
            "`fill_mask` needs a tokenizer with a mask token; `mask_token_id` is None."
        )
    mask_text = tokenizer.vocabulary[mask_id]
    vocabulary = tf.constant(tokenizer.vocabulary)
    length = preprocessor.sequence_length

    def fill_mask(text):
        parts = tf.strings.split(text, sep=mask_text)  # (B, (parts))
        pieces = tokenizer.tokenize(parts.flat_values)  # (N, (n))
        counts = parts.row_lengths()
        not_last = tf.ragged.range(counts).flat_values < tf.repeat(counts - 1, counts)
        masks = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(not_last, tf.int32))], mask_id),
            tf.cast(not_last, tf.int64),
        )  # (N, (0 or 1)): a mask token after each part but the last
        ids = parts.with_flat_values(tf.concat([pieces, masks], axis=1)).merge_dims(1, 2)
        ids, segment_ids = pack_segments(
            [ids], length, preprocessor.start_token_id, preprocessor.end_token_id
        )
        token_ids, padding_mask = pad(ids, length, preprocessor.pad_token_id)
        segment_ids, _ = pad(segment_ids, length, 0)
        is_mask = tf.equal(token_ids, mask_id)
        positions = tf.ragged.boolean_mask(
            tf.broadcast_to(tf.range(length), tf.shape(is_mask)), is_mask
        )
        mask_positions = positions.to_tensor(0)  # (B, M)
        x = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
            "mask_positions": mask_positions,
        }
        logits = model(x, training=False)
        logits = _float32(logits["mlm"] if isinstance(logits, dict) else logits)  # (B, M, V)
        scores, token_ids = tf.math.top_k(tf.nn.softmax(logits), k=top_k)  # (B, M, k)
        num_masks = tf.cast(positions.row_lengths(), tf.int32)
        valid = (tf.range(tf.shape(mask_positions)[1]) < num_masks[:, None])[:, :, None]
        return {
            "num_masks": num_masks,
            "mask_positions": tf.where(valid[:, :, 0], mask_positions, -1),
            "token_ids": tf.where(valid, token_ids, -1),
            "tokens": tf.where(valid, tf.gather(vocabulary, token_ids), ""),
            "scores": tf.where(valid, scores, 0.0),
        }

    return fill_mask, [TEXT]


def _bio_scheme(label_names):
    """`(begins, types, type_names)`: per label, B- or not and entity type index (-1: O)."""
    type_names, begins, types = [], [], []
    for name in label_names:
        if name == "O":
            begins.append(False)
            types.append(-1)
            continue
        if name[:2] not in ("B-", "I-") or len(name) < 3:
            raise ValueError(
                f"`tag` needs BIO labels ('O', 'B-type', 'I-type'). Received: {name!r} in "
                f"{list(label_names)}"
            )
        if name[2:] not in type_names:
            type_names.append(name[2:])
        begins.append(name.startswith("B-"))
        types.append(type_names.index(name[2:]))
    if "O" not in label_names:
        raise ValueError(f"`tag` needs an 'O' label. Received: {list(label_names)}")
    return begins, types, type_names


def tag_endpoint(model, preprocessor: TokenClassificationPreprocessor):
    """`tag(text)`: a BIO tag per whitespace-separated word, and the entities they form.

    As in training, each word is tokenized on its own and tagged by its first piece. An
    entity starts at `B-x`, or at `I-x` not following a word of type `x` (conlleval).
    Words past `sequence_length - 2` pieces are tagged `O` with score 0.
    """
    names = list(preprocessor.label_names)
    begins, types, type_names = _bio_scheme(names)
    outside = names.index("O")
    begins, types = tf.constant(begins), tf.constant(types, tf.int32)
    label_constant, type_constant = tf.constant(names), tf.constant(type_names or [""])
    budget = preprocessor.sequence_length - 2

    def tag(text):
        words, starts, ends = tf_text.WhitespaceTokenizer().tokenize_with_offsets(text)
        x = preprocessor(words)
        probabilities = tf.nn.softmax(_float32(model(x, training=False)))  # (B, T, L)
        counts = words.with_flat_values(
            preprocessor.tokenizer.tokenize(words.flat_values).row_lengths()
        )  # (B, (w)) pieces per word
        first = tf.math.cumsum(counts, axis=1, exclusive=True)  # (B, (w)) in-row piece index
        kept = (first < budget) & (counts > 0)
        word_probabilities = tf.gather(
            probabilities,
            tf.cast(tf.minimum(1 + first, budget), tf.int32).to_tensor(0),
            batch_dims=1,
        )  # (B, W, L); cut words read a kept position, then get `O`
        flat_kept = kept.flat_values
        flat = tf.ragged.boolean_mask(word_probabilities, tf.ones_like(kept).to_tensor(False))
        flat = flat.flat_values  # (words, L)
        label = tf.where(flat_kept, tf.argmax(flat, -1, output_type=tf.int32), outside)
        score = tf.where(flat_kept, tf.reduce_max(flat, -1), 0.0)
        # BIO decoding over all words of the batch, row by row.
        rows = words.value_rowids()
        word_type = tf.gather(types, label)
        previous = tf.concat([[-1], word_type[:-1]], axis=0)
        row_start = tf.concat([[True], rows[1:] != rows[:-1]], axis=0)
        previous = tf.where(row_start, -1, previous)
        start = (word_type >= 0) & (tf.gather(begins, label) | (word_type != previous))
        entity = tf.cumsum(tf.cast(start, tf.int32)) - 1  # entity index of each word
        member = word_type >= 0
        num = tf.reduce_sum(tf.cast(start, tf.int32))
        member_entity = tf.boolean_mask(entity, member)
        entity_starts = tf.math.unsorted_segment_min(
            tf.boolean_mask(starts.flat_values, member), member_entity, num
        )
        entity_ends = tf.math.unsorted_segment_max(
            tf.boolean_mask(ends.flat_values, member), member_entity, num
        )
        entity_rows = tf.boolean_mask(rows, start)
        entity_texts = tf.strings.substr(
            tf.gather(text, entity_rows), entity_starts, entity_ends - entity_starts
        )
        entity_type_names = tf.gather(type_constant, tf.boolean_mask(word_type, start))
        nrows = tf.shape(text, out_type=tf.int64)[0]

        def per_entity(values, default):
            ragged = tf.RaggedTensor.from_value_rowids(values, entity_rows, nrows=nrows)
            return ragged.to_tensor(default)

        return {
            "num_words": tf.cast(words.row_lengths(), tf.int32),
            "words": words.to_tensor(""),
            "word_starts": starts.to_tensor(-1),
            "word_ends": ends.to_tensor(-1),
            "tags": words.with_flat_values(tf.gather(label_constant, label)).to_tensor(""),
            "tag_scores": words.with_flat_values(score).to_tensor(0.0),
            "num_entities": tf.math.bincount(
                tf.cast(entity_rows, tf.int32), minlength=tf.cast(nrows, tf.int32)
            ),
            "entities": per_entity(entity_texts, ""),
            "entity_types": per_entity(entity_type_names, ""),
            "entity_starts": per_entity(entity_starts, -1),
            "entity_ends": per_entity(entity_ends, -1),
        }

    return tag, [TEXT]


class RowSampler(Sampler):
    """Per-row sampling settings `(B,)`: temperature (0 = greedy), top_k (0 = all), top_p.

    Called with per-row seeds `(B, 2)`, each row draws alone: a row with seed `s` gets
    the tokens of `tfllm.generation.generate` on that prompt alone with `seed=s` and
    `TopKSampler(k, t)` (top_p 1) or `TopPSampler(p, t)` (top_k 0), whatever requests
    the server batches with it.
    """

    name = "row"

    def __init__(self, temperature, top_k, top_p):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, logits, seed):
        sampling = self.temperature > 0
        scaled = logits / tf.where(sampling, self.temperature, 1.0)[:, None]
        size = tf.shape(logits)[-1]
        k = tf.where(self.top_k > 0, tf.minimum(self.top_k, size), size)  # (B,)
        values, ids = tf.math.top_k(scaled, k=tf.reduce_max(k))  # (B, K)
        values = tf.where(tf.range(tf.shape(values)[1])[None] < k[:, None], values, -np.inf)
        before = tf.cumsum(tf.nn.softmax(values), axis=-1, exclusive=True)
        p = self.top_p[:, None]
        values = tf.where((p < 1.0) & (before >= p), -np.inf, values)
        choice = tf.map_fn(  # one draw per row and seed: (V,) logits, (2,) seed
            lambda row: tf.random.stateless_categorical(row[0][None], 1, row[1], tf.int32)[0, 0],
            (values, seed),
            fn_output_signature=tf.int32,
        )
        greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return tf.where(sampling, tf.gather(ids, choice, batch_dims=1), greedy)


def _prompts(tokenizer, text, keep, start_id, preprocessor=None, context=None):
    """Prompt ids `(B, P)` + mask: the last `keep` tokens; an empty prompt gets `start_id`.

    With a `CausalLMPreprocessor`, prompts are its `generate_preprocess` ids (`[BOS]`,
    the chat template's user and assistant parts), as `CausalLM.generate` writes them.
    """
    checks = [tf.debugging.assert_positive(tf.size(text), message="`text` must not be empty")]
    if preprocessor is not None:
        x = preprocessor.generate_preprocess(text, sequence_length=context)
        ids = tf.ragged.boolean_mask(x["token_ids"], x["padding_mask"] > 0)
        start_id = None  # the preprocessor's start token is there already
    else:
        ids = tokenizer.tokenize(text)  # (B, (n))
    lengths = ids.row_lengths()
    if start_id is None:
        checks.append(tf.debugging.assert_positive(lengths, message="every prompt needs a token"))
    with tf.control_dependencies(checks):
        ids = tf.identity(ids)
    if start_id is not None:
        empty = tf.cast(lengths == 0, tf.int64)
        column = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], start_id), empty)
        ids = tf.concat([tf.cast(column, tf.int32), ids], axis=1)
    index = tf.ragged.range(ids.row_lengths())
    first = tf.maximum(ids.row_lengths() - tf.cast(keep, tf.int64), 0)
    ids = tf.ragged.boolean_mask(ids, index >= first[:, None])
    return ids.to_tensor(PAD_ID), tf.ones_like(ids).to_tensor(0)


def _generated(tokenizer, new_ids, new_mask, stop_token_ids, limit):
    """Outputs of the generate signatures; `limit` `(B,)` caps each row's token count."""
    new_mask &= tf.range(tf.shape(new_ids)[1])[None] < limit[:, None]
    keep = new_mask & ~_is_stop(new_ids, stop_token_ids)
    text = tokenizer.detokenize(tf.ragged.boolean_mask(new_ids, keep))
    return {
        "text": text,
        "token_ids": tf.where(new_mask, new_ids, PAD_ID),
        "num_tokens": tf.reduce_sum(tf.cast(new_mask, tf.int32), axis=1),
    }


def generate_endpoints(
    model, tokenizer, max_new_tokens: int, sampler, stop_token_ids, start_id, preprocessor=None
):
    """`generate(text)` with the export's settings, and `generate_with_options(...)`.

    Both continue each prompt as `tfllm.generation.generate` does (same decoding graph,
    KV cache inside), keeping the prompt's last tokens when it is too long for the
    context. `generate_with_options` takes per-row (or one-element) settings; each
    `max_new_tokens` is clipped to `[1, max_sequence_length - 1]`; each row samples
    with its own seed (see `RowSampler`). With the model's `CausalLMPreprocessor` as
    `preprocessor`, prompts are written as `CausalLM.generate` writes them (start token,
    chat template).
    """
    context = model.backbone.max_sequence_length
    stops = tuple(stop_token_ids)

    def generate(text):
        token_ids, mask = _prompts(
            tokenizer, text, context - max_new_tokens, start_id, preprocessor, context
        )
        new_ids, new_mask = decode(model, token_ids, mask, max_new_tokens, sampler, stops)
        limit = tf.fill(tf.shape(text), max_new_tokens)
        return _generated(tokenizer, new_ids, new_mask, stops, limit)

    def generate_with_options(text, max_new_tokens, temperature, top_k, top_p, seed):
        shape = tf.shape(text)
        limit = tf.clip_by_value(tf.broadcast_to(max_new_tokens, shape), 1, context - 1)
        steps = tf.reduce_max(limit)
        sampler = RowSampler(*(tf.broadcast_to(v, shape) for v in (temperature, top_k, top_p)))
        seed = tf.math.floormod(tf.broadcast_to(seed, shape), 2**62)
        seed = tf.cast(tf.stack([seed // 2**31, seed % 2**31], axis=1), tf.int32)  # (B, 2)
        token_ids, mask = _prompts(
            tokenizer, text, context - steps, start_id, preprocessor, context
        )
        new_ids, new_mask = decode(model, token_ids, mask, steps, sampler, stops, seed)
        return _generated(tokenizer, new_ids, new_mask, stops, limit)

    options = [
        TEXT,
        tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
        tf.TensorSpec([None], tf.float32, name="temperature"),
        tf.TensorSpec([None], tf.int32, name="top_k"),
        tf.TensorSpec([None], tf.float32, name="top_p"),
        tf.TensorSpec([None], tf.int64, name="seed"),
    ]
    return {
        "generate": (generate, [TEXT]),
        "generate_with_options": (generate_with_options, options),
    }
