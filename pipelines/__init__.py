"""Data stages, one module each: raw files -> clean, deduplicated JSONL shards -> tf.data.

Records between stages are JSON objects, one per line: `{"id": str, "text": str,
"source": str, ...}`.
"""
