"""In-context demonstration selection: which labelled examples to show a language model.

Selectors (`select(queries, k) -> list[list[int]]`, pool indices in prompt order):
`RandomSelector`, `BalancedSelector`, `KNNSelector` (KATE), `BM25Selector`,
`MMRSelector`, `VoteKSelector`. Embeddings: `SentenceEncoder` (mean pooling, cosine),
`embed_pool` (computed once, cached on disk), `top_k_similar` (chunked matrix products).
Prompts: `PromptBuilder` (templates, token budget), `few_shot` with any text generator
(`causal_lm_generator`, `signature_generator`). Scoring by a causal LM:
`score_label_words`, `few_shot_label_scores` (likelihood of each label word),
`evaluate_icl` (accuracy per selector and k). Evaluation of the selections themselves:
`evaluate_demonstrations`.

Example:
>>> from tfllm.demonstrations import KNNSelector, minilm_encoder
>>> pool_texts = ["a warm family comedy", "a gripping crime thriller", "a charming romance",
...               "a tense spy thriller"]
>>> selector = KNNSelector(minilm_encoder(), pool_texts, pool_labels=[1, 1, 1, 0])
>>> selector.select(["an exciting thriller"], k=2)  # the most similar one last
[[3, 1]]
"""

from tfllm.demonstrations.embeddings import SentenceEncoder, embed_pool, top_k_similar
from tfllm.demonstrations.evaluation import (
    evaluate_demonstrations,
    minilm_encoder,
    report_markdown,
    selection_metrics,
)
from tfllm.demonstrations.icl import evaluate_icl, icl_markdown
from tfllm.demonstrations.prompts import (
    PromptBuilder,
    causal_lm_generator,
    few_shot,
    signature_generator,
)
from tfllm.demonstrations.scoring import few_shot_label_scores, score_label_words
from tfllm.demonstrations.selectors import (
    BalancedSelector,
    BM25Selector,
    KNNSelector,
    MMRSelector,
    RandomSelector,
    Selector,
    VoteKSelector,
    vote_k,
)

__all__ = [
    "BM25Selector",
    "BalancedSelector",
    "KNNSelector",
    "MMRSelector",
    "PromptBuilder",
    "RandomSelector",
    "Selector",
    "SentenceEncoder",
    "VoteKSelector",
    "causal_lm_generator",
    "embed_pool",
    "evaluate_demonstrations",
    "evaluate_icl",
    "few_shot",
    "few_shot_label_scores",
    "icl_markdown",
    "minilm_encoder",
    "report_markdown",
    "score_label_words",
    "selection_metrics",
    "signature_generator",
    "top_k_similar",
    "vote_k",
]
