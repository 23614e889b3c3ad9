"""Command-line entry points (`python -m tools.<name>`).

Importing the package makes standard output line-buffered (a log file gets each line when
it is printed, as a terminal does) and starts TensorFlow without its C++ start-up noise
(`tools.quiet_start`), before any tool imports it.
"""

import sys

from tools.quiet_start import start_tensorflow

if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)
start_tensorflow()
