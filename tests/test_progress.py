"""Progress output: plain lines in a log, one live line on a terminal, quiet TF start."""

import io
import os
import subprocess
import sys

import keras
import numpy as np

from tfllm.progress import ProgressCallback, StepProgress, report_phase
from tools.quiet_start import noise


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_line_redrawn_and_a_newline_at_the_end():
    out = Terminal()
    progress = StepProgress(30, stream=out, clock=iter([0.0, 1.0, 2.0, 3.0]).__next__)
    for step in (10, 20, 30):
        progress.update(step, {"loss": 1.0 / step})
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    # A shorter line blanks the rest of the longer one before it.
    frames = text.split("\r")[1:]
    assert len(frames[1]) >= len(frames[0])
    assert "ETA 1s" in frames[1] and "step 30/30" in frames[2]


def test_a_phase_line_is_plain_even_on_a_terminal(capsys):
    out = Terminal()
    report_phase("export", "written", 3.04, stream=out, signatures=2)
    report_phase("prepare", "collected", 0.31, records=38)  # sys.stdout at call time
    assert out.getvalue() == "export: written  signatures 2  3.0 s\n"
    assert capsys.readouterr().out == "prepare: collected  records 38  0.3 s\n"


def test_fit_with_the_callback_writes_one_plain_line_per_interval():
    out = io.StringIO()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((8, 2)), np.zeros((8, 1))
    callback = ProgressCallback(steps=6, every=2, stream=out)
    model.fit(x, y, batch_size=2, epochs=3, steps_per_epoch=2, verbose=0, callbacks=[callback])
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_start_up_noise_is_recognised_but_a_gpu_error_is_kept():
    stub = "I0000 00:00:1.2 9 cudart_stub.cc:31] Could not find cuda drivers on your machine"
    cuinit = "E0000 00:00:1.2 9 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)"
    assert noise(stub, gpu=False) and noise(cuinit, gpu=False)
    assert not noise(cuinit, gpu=True)
    assert not noise("W0000 00:00:1.2 9 some_op.cc:1] a real warning", gpu=False)


def _stderr_of(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return result.stderr


def test_entry_points_start_quietly_and_the_library_keeps_logging_settings():
    stderr = _stderr_of("import tools, tensorflow as tf; tf.constant(1)")
    assert not [line for line in stderr.splitlines() if noise(line, gpu=False)], stderr
    # check=True: the assertion inside fails the test.
    _stderr_of("import os, tfllm; assert 'TF_CPP_MIN_LOG_LEVEL' not in os.environ")
