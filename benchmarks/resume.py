"""Issue 12's single-run acceptance, measured: SIGKILL mid-training, `resume=<run_id>`, compare.

    python benchmarks/resume.py                                  # ltfn5, 300 steps (the acceptance)
    python benchmarks/resume.py --model tiny --dataset synthetic --steps 400 --eval-every 20

Four real `run.py` runs, each against its own SQLite store in a temporary folder:
1. uninterrupted, default checkpoints (at each evaluation): the reference test loss, and the cost of
   checkpointing as `checkpoint_seconds / train_seconds` (both logged by the run);
2. the same with `trainer.checkpoint_every=null`: the wall-clock view of that cost (noisy on a shared CPU);
3. the same, SIGKILLed about half-way (half an evaluation interval after the checkpoint before the
   middle, at run 1's speed), then 4. `resume=<run_id>`. Kills only the process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], folder: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "run.py", *args, f"tracking.uri=sqlite:///{folder}/mlflow.db"],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        sys.exit(f"run.py {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def runs(folder: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ltfn5")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=100)
    a = p.parse_args()
    args = [f"model={a.model}", "init=he", f"dataset={a.dataset}", f"trainer.steps={a.steps}",
            f"trainer.eval_every={a.eval_every}", "trainer.deterministic=true", "trainer.verbose=0"]
    print("overrides:", " ".join(args))
    with tempfile.TemporaryDirectory() as whole, tempfile.TemporaryDirectory() as plain, \
            tempfile.TemporaryDirectory() as killed:
        run(args, whole)
        ref = runs(whole)[1][0].data.metrics
        share = ref["checkpoint_seconds"] / ref["train_seconds"]
        print(f"uninterrupted: test_loss={ref['test_loss']:.8g} train_seconds={ref['train_seconds']:.2f} "
              f"checkpoint_seconds={ref['checkpoint_seconds']:.3f} ({share:.3%} of training, "
              f"{a.steps // a.eval_every} checkpoints)")
        run([*args, "trainer.checkpoint_every=null"], plain)
        bare = runs(plain)[1][0].data.metrics
        print(f"no checkpoints: train_seconds={bare['train_seconds']:.2f} "
              f"(with checkpoints {ref['train_seconds'] / bare['train_seconds'] - 1:+.1%} wall clock)")

        per_step = ref["train_seconds"] / a.steps
        middle = a.steps // 2
        before = (middle // a.eval_every) * a.eval_every  # the checkpoint before the middle
        proc = subprocess.Popen([sys.executable, "run.py", *args, f"tracking.uri=sqlite:///{killed}/mlflow.db"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 1800
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(Path(killed, "checkpoints").glob("*/latest.json"))
            if found:
                try:
                    state = json.loads(found[0].read_text())
                except ValueError:
                    state = None
                if state and state["step"] >= before:
                    break
            time.sleep(0.02)
        if proc.poll() is not None or not state:
            sys.exit("the run ended (or no checkpoint came) before the kill")
        time.sleep((middle - state["step"]) * per_step)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        run_id = found[0].parent.name
        client, _ = runs(killed)
        for _ in range(300):  # its tracking helper ends the orphaned run
            if client.get_run(run_id).info.status != "RUNNING":
                break
            time.sleep(0.2)
        done = len(client.get_metric_history(run_id, "val_loss"))
        print(f"killed: run {run_id} SIGKILLed ~{(middle - state['step']) * per_step:.1f} s after its step-"
              f"{state['step']} checkpoint (~step {middle}), status {client.get_run(run_id).info.status}, "
              f"{done} evaluations recorded")

        started = time.monotonic()
        out = run([*args, f"resume={run_id}"], killed)
        client, found_runs = runs(killed)
        got = found_runs[0]
        steps = {k: [m.step for m in client.get_metric_history(run_id, k)] for k in got.data.metrics}
        duplicates = {k: s for k, s in steps.items() if len(s) != len(set(s))}
        same = f"{got.data.metrics['test_loss']:.6g}" == f"{ref['test_loss']:.6g}"
        print(f"resumed: {time.monotonic() - started:.1f} s, runs in store {len(found_runs)}, "
              f"same run id {got.info.run_id == run_id}, status {got.info.status}, "
              f"from step {got.data.tags.get('resumed_from_step')}, val_loss steps {steps['val_loss']}, "
              f"duplicate steps {duplicates or 'none'}")
        print(f"test_loss resumed={got.data.metrics['test_loss']:.8g} uninterrupted={ref['test_loss']:.8g} "
              f"equal to 6 significant digits: {same}; checkpoints left: "
              f"{list(Path(killed, 'checkpoints').glob('*/*'))}")
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
