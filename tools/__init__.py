"""Command-line entry points (`python -m tools.<name>`).

Importing the package starts TensorFlow without its C++ start-up noise
(`tools.quiet_start`), before any tool imports it.
"""

from tools.quiet_start import start_tensorflow

start_tensorflow()
