"""The baseline for benchmarks/sweep_memory.py: plain Keras running job after job in one process.

    python benchmarks/keras_job_memory.py --jobs 12 --steps 50

Each job does what a cnnlab sweep job does, written by hand: build and compile
LTFN5 (benchmarks/handwritten_ltfn5.py), train N steps with one validation
pass, evaluate the test set, then `keras.backend.clear_session()` and
`gc.collect()`. Prints resident memory after each job and the growth from the
second job to the last, so cnnlab's per-job growth can be read against the
growth of Keras and TensorFlow themselves.
"""

import argparse
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from handwritten_ltfn5 import load_mnist, ltfn5  # noqa: E402


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    x, y, x_test, y_test = load_mnist()
    after = []
    print(f"{args.jobs} plain-Keras jobs of ltfn5, {args.steps} steps each, one process\n")
    print("| job | rss MB |\n|---|---|")
    for job in range(args.jobs):
        model = ltfn5(seed=job)
        model.fit(x[:55000], y[:55000], batch_size=100, epochs=1, steps_per_epoch=args.steps,
                  validation_data=(x[55000:], y[55000:]), validation_batch_size=500, verbose=0)
        model.evaluate(x_test, y_test, batch_size=500, verbose=0)
        del model
        keras.backend.clear_session()
        gc.collect()
        after.append(rss_mb())
        print(f"| {job + 1} | {after[-1]:.0f} |", flush=True)
    if len(after) > 2:
        growth = after[-1] - after[1]
        print(f"\nrss growth from job 2 to job {len(after)}: {growth:+.0f} MB "
              f"({growth / (len(after) - 2):+.1f} MB per job)")


if __name__ == "__main__":
    main()
