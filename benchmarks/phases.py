"""Where one `python run.py ...` spends its time: a timeline of its phases, wall and CPU seconds since start.

    python benchmarks/phases.py model=ltfn5 init=he trainer.steps=100 trainer.verbose=0
    python benchmarks/phases.py --handwritten --steps 100   # the same for benchmarks/handwritten_ltfn5.py

Wraps cnnlab's own phase functions (data loading, model preparation, init
diagnostics, MLflow waits, test pass, artifact writing) with timestamps, notes
when the TensorFlow import begins, then runs `run.py` unchanged in this process.
Each line shows the wall time and this process's CPU seconds (all its threads, the
recorder's MLflow thread `cnnlab-mlflow` among them) so far; at exit, the CPU seconds of each
thread of this process, grouped by thread name (TensorFlow's pools spin).
`--handwritten` times the hand-written script's Keras import, `fit` and `evaluate` the same way.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import runpy
import sys
import threading
import time
from pathlib import Path

T0 = time.time()
REPO = Path(__file__).resolve().parents[1]


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(stat_path: str) -> tuple[str, float]:
    """(name, user + system CPU seconds) of a process or thread, from its /proc stat file."""
    with open(stat_path) as f:
        text = f.read()
    name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / TICK


def stamp(what: str) -> None:
    print(f"[{time.time() - T0:6.2f} s wall, {time.process_time():6.2f} s CPU] {what}", file=sys.stderr, flush=True)


def per_thread_cpu() -> None:
    """CPU seconds of this process's threads by name, and of its waited-for children (git)."""
    import resource

    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for task in os.listdir("/proc/self/task"):
        try:
            name, cpu = proc_cpu(f"/proc/self/task/{task}/stat")
        except (OSError, ValueError):
            continue
        by_name[name].append(cpu)
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    print("CPU s by thread (live threads): " + ", ".join(f"{n} x{len(c)} {sum(c):.2f}" for n, c in rows),
          file=sys.stderr)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"CPU s of this process {time.process_time():.2f}, of waited-for children (git) "
          f"{children.ru_utime + children.ru_stime:.2f}", file=sys.stderr, flush=True)


def timed(owner, name: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stamp(f"{name} begins")
        try:
            return fn(*args, **kwargs)
        finally:
            stamp(f"{name} ends")

    setattr(owner, name, wrapper)


def watch_imports() -> None:
    for module in ("mlflow", "tensorflow"):  # MLflow on the recorder's thread, TensorFlow on the main one
        while module not in sys.modules:
            time.sleep(0.01)
        stamp(f"import of {module} begins")


def handwritten(args: list[str]) -> None:
    """The hand-written script's phases: Keras's import (TensorFlow's), `Model.fit`, `Model.evaluate`."""
    stamp("import of keras begins")
    import keras

    stamp("import of keras ends")
    timed(keras.Model, "fit")
    timed(keras.Model, "evaluate")
    atexit.register(per_thread_cpu)
    atexit.register(stamp, "interpreter exit begins")
    sys.argv = ["handwritten_ltfn5.py", *args]
    runpy.run_path(str(REPO / "benchmarks" / "handwritten_ltfn5.py"), run_name="__main__")


def main() -> None:
    if sys.argv[1:2] == ["--handwritten"]:
        return handwritten(sys.argv[2:])
    import cnnlab.record.recorder as recorder
    import cnnlab.run.train as train

    for name in ("train", "load_data", "prepare_model", "evaluate", "run_files", "release_keras_state"):
        timed(train, name)
    timed(recorder.Recorder, "flush")
    timed(recorder.Recorder, "end")
    train_and_record = train.train_and_record

    def patched(*args, **kwargs):  # cnnlab.run.fit imports TensorFlow: patch it where train_and_record imports it
        import cnnlab.run.diagnostics as diagnostics
        import cnnlab.run.fit as fit

        timed(diagnostics, "init_diagnostics")
        timed(fit, "fit")
        return train_and_record(*args, **kwargs)

    train.train_and_record = patched
    threading.Thread(target=watch_imports, daemon=True).start()
    atexit.register(per_thread_cpu)  # atexit runs last-registered first: after the stamp below
    atexit.register(stamp, "interpreter exit begins")
    sys.argv = ["run.py", *sys.argv[1:]]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()
