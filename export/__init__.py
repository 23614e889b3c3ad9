"""Export of tfllm models as SavedModels that take raw strings, and a local server for them."""
