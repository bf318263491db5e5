"""Where one `python run.py ...` spends its time: a timeline of its phases, seconds since start.

    python benchmarks/phases.py model=ltfn5 init=he trainer.steps=100 trainer.verbose=0

Wraps cnnlab's own phase functions (data loading, model preparation, MLflow
waits, test pass, artifact writing) with timestamps, notes when the TensorFlow
import begins, then runs `run.py` unchanged in this process.
"""

from __future__ import annotations

import atexit
import functools
import runpy
import sys
import threading
import time
from pathlib import Path

T0 = time.time()
REPO = Path(__file__).resolve().parents[1]


def stamp(what: str) -> None:
    print(f"[{time.time() - T0:6.2f} s] {what}", file=sys.stderr, flush=True)


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
    while "tensorflow" not in sys.modules:  # MLflow is imported by the tracking helper process, not here
        time.sleep(0.01)
    stamp("import of tensorflow begins")


def main() -> None:
    import cnnlab.recorder as recorder
    import cnnlab.train as train

    for name in ("train", "load_data", "prepare_model", "evaluate", "run_files", "release_keras_state"):
        timed(train, name)
    timed(recorder.Recorder, "flush")
    threading.Thread(target=watch_imports, daemon=True).start()
    atexit.register(stamp, "interpreter exit begins")
    sys.argv = ["run.py", *sys.argv[1:]]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()
