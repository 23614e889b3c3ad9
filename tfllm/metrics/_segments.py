"""Input checks shared by the plain-Python text metrics (BLEU, chrF, ROUGE, exact match)."""

from collections.abc import Sequence


def check_segments(segments, argument: str) -> None:
    """Raise unless `segments` is a non-empty list (or tuple) of strings."""
    if isinstance(segments, str) or not isinstance(segments, Sequence):
        raise TypeError(
            f"`{argument}` must be a list of strings. Received: {type(segments).__name__}"
        )
    if not segments:
        raise ValueError(f"`{argument}` must hold at least one segment. Received: []")
    for i, segment in enumerate(segments):
        if not isinstance(segment, str):
            raise TypeError(
                f"`{argument}[{i}]` must be a string. Received: {type(segment).__name__}"
            )


def reference_streams(references, num_hypotheses: int) -> list[Sequence[str]]:
    """One stream (a list of strings) or several (a list of lists) -> a list of streams."""
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(
            "`references` must be a list of strings (one reference stream) or a list of "
            f"such lists (several streams). Received: {type(references).__name__}"
        )
    is_stream = [isinstance(r, Sequence) and not isinstance(r, str) for r in references]
    if references and all(is_stream):
        streams = list(references)
    elif any(is_stream):
        raise TypeError(
            "`references` must hold only strings (one stream) or only lists of strings "
            "(several streams), not a mix."
        )
    else:
        streams = [references]
    for k, stream in enumerate(streams):
        name = "references" if len(streams) == 1 and stream is references else f"references[{k}]"
        if len(stream) != num_hypotheses:
            raise ValueError(
                f"`{name}` must have one segment per hypothesis ({num_hypotheses}). "
                f"Received: {len(stream)} segments"
            )
        for i, segment in enumerate(stream):
            if not isinstance(segment, str):
                raise TypeError(
                    f"`{name}[{i}]` must be a string. Received: {type(segment).__name__}"
                )
    return streams
