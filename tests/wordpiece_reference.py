"""A plain-Python WordPiece learner: the reference of `train_wordpiece`'s vocabularies.

Hugging Face's `WordPieceTrainer` algorithm, written from its description: pieces are BPE
merges over the words of the text; a word starts as its first character and `##`-prefixed
continuation characters, and the most frequent adjacent pair becomes a new piece
(`"t" + "##h"` -> `"th"`, `"##i" + "##s"` -> `"##is"`) until the vocabulary is full. Ties
go to the pair of smaller ids; ids are the special tokens, the characters, then the `##`
characters, each in sorted order, then the pieces in order of creation.
"""

import collections
import heapq
import itertools


def count_words(texts, normalizer, pre_tokenizer) -> collections.Counter:
    """`{word: count}` of `texts` (strings) after a `tokenizers` normalizer and pre-tokenizer."""
    counts = collections.Counter()
    for text in texts:
        pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in pieces)
    return counts


def learn_wordpiece(
    word_counts: dict, vocabulary_size: int, min_frequency: int, special_tokens, prefix="##"
) -> list[str]:
    """The pieces (special tokens first, then in order of creation) learnt from `word_counts`.

    Example:
    >>> learn_wordpiece({"this": 3, "is": 2, "his": 1}, 10, 2, ["[UNK]"])
    ['[UNK]', 'h', 'i', 's', 't', '##h', '##i', '##s', '##is', 'th']
    """
    tokens = list(special_tokens)  # id -> piece
    ids = {token: i for i, token in enumerate(tokens)}

    def add(token: str) -> int:
        if token not in ids:
            ids[token] = len(tokens)
            tokens.append(token)
        return ids[token]

    ordered = sorted(word_counts)
    for char in sorted({char for word in ordered for char in word}):
        add(char)
    for char in sorted({char for word in ordered for char in word[1:]}):
        add(prefix + char)
    words = [[ids[word[0]], *(ids[prefix + c] for c in word[1:])] for word in ordered]
    counts = [word_counts[word] for word in ordered]
    pair_counts = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indices of the words that hold it
    for index, word in enumerate(words):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += counts[index]
            where[pair].add(index)
    # Most frequent first, ties to the smaller pair of ids. Entries go stale as counts
    # change: a popped entry whose count is not the pair's current one is re-queued.
    queue = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(queue)
    while len(tokens) < vocabulary_size and queue:
        negative_count, pair = heapq.heappop(queue)
        count = pair_counts[pair]
        if -negative_count != count:
            if count > 0:
                heapq.heappush(queue, (-count, pair))
            continue
        if count < max(min_frequency, 1):
            break
        new = add(tokens[pair[0]] + tokens[pair[1]].removeprefix(prefix))
        appeared = set()
        for index in sorted(where.pop(pair)):
            old = words[index]
            merged, i = [], 0
            while i < len(old):  # left to right, as Hugging Face's `Word::merge`
                if i + 1 < len(old) and (old[i], old[i + 1]) == pair:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(old[i])
                    i += 1
            old_pairs, new_pairs = list(itertools.pairwise(old)), list(itertools.pairwise(merged))
            for p in old_pairs:
                pair_counts[p] -= counts[index]
            for p in new_pairs:
                pair_counts[p] += counts[index]
                where[p].add(index)
            appeared.update(set(new_pairs) - set(old_pairs))
            words[index] = merged
        for p in sorted(appeared):
            heapq.heappush(queue, (-pair_counts[p], p))
    return tokens
