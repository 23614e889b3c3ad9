r"""Training progress a person reads: one live line on a terminal, plain lines in a log.

`StepProgress.update(step, logs)` is called at each log interval. On a terminal it redraws
one line (`\r`): steps, loss, validation scores, tokens/s, ETA; anywhere else (CI, `nohup`,
a notebook capture) it writes one plain line per call, with no carriage return or colour
code. `ProgressCallback` does the same for `keras.Model.fit`, one update per epoch.
`report_phase` writes one plain line when a phase of a long step ends (data preparation,
export): what it did, its counts and seconds.

Example:
>>> import io
>>> log = io.StringIO()  # not a terminal: one plain line per update
>>> progress = StepProgress(20, stream=log, clock=iter([0.0, 5.0, 10.0]).__next__)
>>> progress.update(10, {"loss": 6.5, "tokens_per_second": 250.0})
>>> progress.update(20, {"loss": 6.25, "val_loss": 6.3})
>>> print(log.getvalue(), end="")
step 10/20  loss 6.5  tokens/s 250  ETA 5s
step 20/20  loss 6.25  val_loss 6.3  10s
>>> report_phase("prepare", "cleaned", 12.34, stream=log, kept=36, dropped=2)
>>> log.getvalue().splitlines()[-1]
'prepare: cleaned  kept 36  dropped 2  12.3 s'
"""

import sys
import time

import keras

# Shown in this order when present, with their short names.
SHOWN = {
    "loss": "loss",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
    "val_mlm_accuracy": "val_mlm_accuracy",
    "tokens_per_second": "tokens/s",
}


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StepProgress:
    """Progress of a run of `total` steps, resumed at step `initial`.

    Args:
        total: the last step.
        initial: the step the run starts from (a resumed run's), for the ETA.
        verbose: `False` writes nothing.
        stream: where to write (default `sys.stdout`); a terminal gets one live line.
        clock: seconds now (for tests).
    """

    def __init__(self, total: int, initial: int = 0, verbose=True, stream=None, clock=None):
        self.total = total
        self.initial = initial
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.clock = clock or time.perf_counter
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = self.clock()
        self._width = 0

    def update(self, step: int, logs: dict) -> None:
        """Shows `step` with the `SHOWN` entries of `logs` (floats)."""
        if not self.verbose:
            return
        fields = [f"step {step}/{self.total}"]
        fields += [f"{name} {_number(logs[k])}" for k, name in SHOWN.items() if k in logs]
        elapsed = self.clock() - self.started
        if step < self.total and step > self.initial:
            eta = elapsed / (step - self.initial) * (self.total - step)
            fields.append(f"ETA {_duration(eta)}")
        else:
            fields.append(_duration(elapsed))
        line = "  ".join(fields)
        if self.live:
            end = "\n" if step >= self.total else ""
            self.stream.write("\r" + line.ljust(self._width) + end)
            self._width = 0 if end else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class ProgressCallback(keras.callbacks.Callback):
    """`StepProgress` for `fit(..., epochs=steps // every, steps_per_epoch=every)`.

    Example:
    >>> callback = ProgressCallback(steps=40, every=20)  # fit(..., verbose=0, callbacks=[...])
    """

    def __init__(self, steps: int, every: int, verbose=True, stream=None):
        super().__init__()
        self.every = every
        self.progress = StepProgress(steps, verbose=verbose, stream=stream)

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update((epoch + 1) * self.every, {k: float(v) for k, v in logs.items()})


def report_phase(task: str, phase: str, seconds: float, stream=None, **counts) -> None:
    """Writes `"<task>: <phase>  <name> <count> ...  <seconds> s"` and a newline.

    A phase line is written once, when the phase ends, so it is a plain line on a terminal
    too (no carriage return).

    Args:
        task: what runs (`"prepare"`, `"export"`).
        phase: what just ended (`"cleaned"`, `"validated in a fresh process"`).
        seconds: since the task started.
        stream: where to write (default `sys.stdout` at the time of the call).
        **counts: shown in order as `name value`.
    """
    fields = [f"{task}: {phase}", *(f"{name} {value}" for name, value in counts.items())]
    stream = stream or sys.stdout
    stream.write("  ".join([*fields, f"{seconds:.1f} s"]) + "\n")
    stream.flush()
