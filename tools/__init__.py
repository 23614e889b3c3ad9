"""Command-line entry points (`python -m tools.<name>`)."""
