"""`CausalLM.generate`: keras-hub's calling convention over `tfllm.generation`'s decoder.

Prompts are right-padded rows of width `L` (`max_length`); each row is continued until it
fills `L` or produces a stop token. All rows share one compiled decoding loop
(`tfllm.generation.decode_prompts`: KV cache, beam search, optional XLA), run for
`L - shortest prompt` steps; a row's tokens past its own `L` are dropped.
"""

import numpy as np
import tensorflow as tf

from tfllm.generation import PAD_ID, decode_prompts
from tfllm.preprocessing.chat import as_conversations


def _stop_ids(model, stop_token_ids) -> tuple[int, ...]:
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ValueError(
                f'`stop_token_ids` must be "auto", None or a sequence of ids. '
                f"Received: {stop_token_ids!r}"
            )
        if model.preprocessor is None:
            raise ValueError(
                'stop_token_ids="auto" needs a `preprocessor` (its end token). This model has '
                "none: pass `stop_token_ids=None` to generate up to the full length, or the "
                "ids that end a row."
            )
        eos = model.preprocessor.eos_token_id
        return () if eos is None else (int(eos),)
    if stop_token_ids is None:
        return ()
    return tuple(int(t) for t in np.atleast_1d(stop_token_ids))


def _prompt_dict(model, inputs, max_length, chat: bool) -> tuple[dict, bool]:
    """`(dict of token_ids / padding_mask numpy (B, L), were the inputs strings or chats)`.

    `chat`: `inputs` is the `{"roles", "contents"}` dict of `as_conversations`.
    """
    if isinstance(inputs, dict) and not chat:
        if "token_ids" not in inputs:
            raise ValueError(f"A dict `inputs` needs 'token_ids'. Received: {sorted(inputs)}")
        ids = np.asarray(inputs["token_ids"])
        mask = np.asarray(inputs.get("padding_mask", np.ones_like(ids)))
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                "`inputs['token_ids']` and `['padding_mask']` must be (B, L) arrays of one "
                f"shape. Received: {ids.shape} and {mask.shape}"
            )
        return {"token_ids": ids.astype("int32"), "padding_mask": mask.astype(bool)}, False
    if model.preprocessor is None:
        raise ValueError(
            "String and chat `inputs` need a `preprocessor` (a CausalLMPreprocessor). This "
            "CausalLM has none: attach one, or pass a dict of `token_ids` and `padding_mask`."
        )
    x = model.preprocessor.generate_preprocess(inputs, sequence_length=max_length)
    x = {key: value.numpy() for key, value in x.items()}
    return {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"].astype(bool)}, True


def complete(model, inputs, max_length, stop_token_ids, strip_prompt, sampler, seed):
    """The body of `CausalLM.generate` (see there)."""
    if isinstance(inputs, tf.data.Dataset):
        parts = [
            complete(model, batch, max_length, stop_token_ids, strip_prompt, sampler, seed)
            for batch in inputs
        ]
        if parts and isinstance(parts[0], dict):
            return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return [text for part in parts for text in ([part] if isinstance(part, str) else part)]
    conversations = as_conversations(inputs)
    if conversations is not None:  # the reply alone, after the rendered conversation
        inputs, single = conversations
        strip_prompt = True
    else:
        single = isinstance(inputs, (str, bytes)) or (
            isinstance(inputs, (np.ndarray, tf.Tensor)) and np.ndim(inputs) == 0
        )
        inputs = [inputs] if single else inputs
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
    ):
        raise ValueError(f"`max_length` must be an int or None. Received: {max_length!r}")
    stops = _stop_ids(model, stop_token_ids)
    x, strings = _prompt_dict(model, inputs, max_length, chat=conversations is not None)
    ids, mask = x["token_ids"], x["padding_mask"]
    width = ids.shape[1]
    context = model.backbone.max_sequence_length
    if width > context:
        raise ValueError(
            f"`max_length` ({width}) exceeds the model's context (`max_sequence_length` = "
            f"{context})."
        )
    lengths = mask.sum(axis=1)
    room = width - lengths  # (B,) new tokens each row may take
    new_ids = np.full((ids.shape[0], 0), PAD_ID, "int32")
    keep = np.zeros(new_ids.shape, bool)
    if room.max() > 0:
        prompts = tf.RaggedTensor.from_row_lengths(ids[mask], lengths)
        new, new_mask = decode_prompts(
            model, prompts, int(room.max()), sampler, stops, seed, max_length=width
        )
        new_ids, keep = new.numpy(), new_mask.numpy()
        keep &= np.arange(new_ids.shape[1])[None, :] < room[:, None]
    pad_id = PAD_ID if model.preprocessor is None else model.preprocessor.pad_token_id
    if strip_prompt:
        out = {"token_ids": np.where(keep, new_ids, pad_id).astype("int32"), "padding_mask": keep}
    else:
        out_ids = np.full_like(ids, pad_id)
        out_mask = np.zeros_like(mask)
        for row in range(ids.shape[0]):
            tokens = np.concatenate([ids[row][mask[row]], new_ids[row][keep[row]]])
            out_ids[row, : len(tokens)] = tokens
            out_mask[row, : len(tokens)] = True
        out = {"token_ids": out_ids, "padding_mask": out_mask}
    if not strings:
        return out
    texts = model.preprocessor.generate_postprocess(out)
    return texts[0] if single else texts
