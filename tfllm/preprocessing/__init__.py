"""In-graph preprocessors: strings -> `(x, y, sample_weight)` for tf.data and SavedModels.

Model inputs use the fixed keys `token_ids`, `segment_ids`, `padding_mask`,
`mask_positions`; outputs are int32 `(B, sequence_length)` tensors, weights float32.
"""

from tfllm.preprocessing.base import Preprocessor
from tfllm.preprocessing.bert import BertPreprocessor, MaskedLMPreprocessor
from tfllm.preprocessing.causal_lm import CausalLMPreprocessor, pack_documents
from tfllm.preprocessing.chat import ChatTemplate
from tfllm.preprocessing.gpt_classifier import GPTClassifierPreprocessor
from tfllm.preprocessing.nsp import nsp_pairs
from tfllm.preprocessing.token_classification import TokenClassificationPreprocessor

__all__ = [
    "BertPreprocessor",
    "CausalLMPreprocessor",
    "ChatTemplate",
    "GPTClassifierPreprocessor",
    "MaskedLMPreprocessor",
    "Preprocessor",
    "TokenClassificationPreprocessor",
    "nsp_pairs",
    "pack_documents",
]
