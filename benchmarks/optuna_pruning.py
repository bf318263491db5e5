"""What the pruner saves: the same Optuna study with the median pruner and without, in one sitting.

    python benchmarks/optuna_pruning.py                  # 8 trials x 100 steps, 2 workers, one pair
    python benchmarks/optuna_pruning.py --pairs 2        # two pairs, the order alternated

Each study is `python run.py -m +experiment=optuna_lr_init` (LTFN-5 on MNIST, lr and init searched by
a seeded TPE sampler) with `trainer.steps=100 trainer.eval_every=20 hydra.sweeper.pruner.n_warmup_steps=20
tracking.log_model=false hydra.sweeper.n_trials=8 hydra.launcher.n_jobs=2` and
`hydra.sweeper.pruner.type=median` or `none`, into a fresh MLflow and Optuna store. Printed for each:
the trials COMPLETE / PRUNED / FAIL, the steps trained over all trials (a pruned trial counts to its
`pruned_at_step`, a diverged one to its `diverged_at_step`), the best value and its trial's params, the
wall time and the CPU time of the whole process tree. The CPU model and the load average are printed
beside them: on a shared machine wall time follows the load, the steps and the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep_overhead import cpu_model  # benchmarks/ is on sys.path when a script in it runs

REPO = Path(__file__).resolve().parents[1]


def study(pruner: str, args) -> dict:
    """Run one study into a fresh store; its counts, steps, best trial and times."""
    import optuna
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri, storage = f"sqlite:///{tmp}/mlflow.db", f"sqlite:///{tmp}/optuna.db"
        cmd = [sys.executable, "run.py", "-m", "+experiment=optuna_lr_init", f"trainer.steps={args.steps}",
               f"trainer.eval_every={args.eval_every}", f"hydra.sweeper.pruner.n_warmup_steps={args.eval_every}",
               "tracking.log_model=false", "trainer.verbose=0", f"hydra.sweeper.n_trials={args.trials}",
               f"hydra.launcher.n_jobs={args.workers}", f"hydra.sweeper.pruner.type={pruner}",
               f"hydra.sweeper.storage={storage}", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp}/multirun"]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=7200)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            sys.exit(f"the {pruner} study failed ({done.returncode}): {done.stderr[-2000:]}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        (name,) = optuna.study.get_all_study_names(storage)
        trials = optuna.load_study(study_name=name, storage=storage).trials
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
        steps = 0
        for run in runs:
            tags = run.data.tags
            if "mlflow.parentRunId" in tags:
                steps += int(tags.get("pruned_at_step") or tags.get("diverged_at_step") or args.steps)
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    return {"pruner": pruner, **states, "steps": steps, "best": best.value, "params": best.params, "wall": wall,
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores; {args.trials} trials x {args.steps} steps, "
          f"evaluated every {args.eval_every}, {args.workers} workers")
    for pair in range(args.pairs):
        for pruner in ("median", "none") if pair % 2 == 0 else ("none", "median"):
            r = study(pruner, args)
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
            print(f"pair {pair + 1}, pruner {r['pruner']:6}: {r['COMPLETE']} complete, {r['PRUNED']} pruned, "
                  f"{r['FAIL']} failed; {r['steps']} steps trained; best val_accuracy {r['best']:.4f} ({params}); "
                  f"wall {r['wall']:.0f} s, CPU {r['cpu']:.0f} s; load average {r['load']:.2f} before",
                  flush=True)


if __name__ == "__main__":
    main()
