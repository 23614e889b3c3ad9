"""Named architecture sizes. A preset is constructor kwargs, nothing more (no weights).

`Backbone.from_preset(name)` builds a randomly initialised backbone of that size; weights
come from a preset folder instead (`Backbone.from_preset(folder)`, `tfllm.models.preset_io`).
"""

PRESETS: dict[str, dict] = {
    # Tiny sizes for tests and the built-in demo.
    "bert_tiny": {
        "backbone": "bert",
        "config": dict(
            vocabulary_size=1024,
            num_layers=2,
            num_heads=2,
            hidden_dim=64,
            intermediate_dim=128,
            max_sequence_length=128,
        ),
    },
    "gpt_tiny": {
        "backbone": "gpt",
        "config": dict(
            vocabulary_size=1024,
            num_layers=2,
            num_heads=2,
            hidden_dim=64,
            intermediate_dim=256,
            max_sequence_length=128,
        ),
    },
    "llama_tiny": {
        "backbone": "gpt",
        "config": dict(
            vocabulary_size=1024,
            num_layers=2,
            num_heads=4,
            num_key_value_heads=2,
            hidden_dim=64,
            intermediate_dim=176,
            max_sequence_length=128,
            position_embedding="rope",
            normalization="rms_norm",
            activation="swiglu",
            use_bias=False,
            tie_word_embeddings=False,
            dropout=0.0,
        ),
    },
    # The benchmark size of BENCHMARKS.md (4L / d256 / h4 / ff1024, vocab 8192).
    "bert_bench": {
        "backbone": "bert",
        "config": dict(
            vocabulary_size=8192,
            num_layers=4,
            num_heads=4,
            hidden_dim=256,
            intermediate_dim=1024,
            max_sequence_length=128,
        ),
    },
    "gpt_bench": {
        "backbone": "gpt",
        "config": dict(
            vocabulary_size=8192,
            num_layers=4,
            num_heads=4,
            hidden_dim=256,
            intermediate_dim=1024,
            max_sequence_length=128,
        ),
    },
    # Published shapes, random weights (BERT-base, GPT-2 small).
    "bert_base_random": {
        "backbone": "bert",
        "config": dict(
            vocabulary_size=30522,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            intermediate_dim=3072,
            max_sequence_length=512,
        ),
    },
    "gpt2_small_random": {
        "backbone": "gpt",
        "config": dict(
            vocabulary_size=50257,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            intermediate_dim=3072,
            max_sequence_length=1024,
        ),
    },
}
