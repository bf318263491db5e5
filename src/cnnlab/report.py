"""The report of a sweep: a comparison table and plots by the swept keys, from what MLflow holds.

    python -m cnnlab.report                                 # the newest sweep of experiment cnnlab
    python -m cnnlab.report --sweep <parent_run_id> --metric test_accuracy --out my_report

Writes `REPORT.md`, `results.csv` and two plots into `--out` (default:
`reports/<parent_run_id>` beside the SQLite store, outside git): one row per job
with its swept values, status and final metrics, sorted by `--metric`; the
validation curves of every job; the metric by the swept values (a heat map for
two keys, bars otherwise). Every number comes from the store. A study's own
prose lives with the study (e.g. `experiments/ltfn_init/study_report.py`).

Example:
    >>> split_name("init=he,optimizer.lr=0.01,+model.layers.conv1.dilation_rate=2")
    {'init': 'he', 'optimizer.lr': '0.01', 'model.layers.conv1.dilation_rate': '2'}
    >>> short(0.91234), short(1.5e26), short(None)
    ('0.9123', '1.5e+26', '—')
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def short(v) -> str:
    """A number as a table shows it: 4 significant digits, scientific when large or tiny."""
    if v is None:
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def split_name(run_name: str) -> dict[str, str]:
    """A sweep child's name ('init=he,optimizer.lr=0.01') as {key: value}; `+`/`~` prefixes dropped."""
    from cnnlab.stats import split_name as split

    return split(run_name)


def find_sweep(client, experiment: str, sweep: str):
    """The parent run: `sweep` is its id, or 'last' (the newest sweep parent of `experiment`)."""
    if sweep != "last":
        return client.get_run(sweep)
    exp = client.get_experiment_by_name(experiment)
    found = exp and client.search_runs([exp.experiment_id], filter_string="tags.`cnnlab.sweep` = 'parent'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise LookupError(f"no sweep in experiment {experiment!r}: run one with `python run.py -m ...`")
    return found[0]


def rows_of(client, parent) -> tuple[list[dict], list[str]]:
    """One row per job (the newest child per name, as after a resume) and the swept keys, in sweep order."""
    from cnnlab.sweep.callback import summarize_children

    newest = {}
    for row in summarize_children(client, parent.info.run_id):
        newest[row["run"]] = row  # children come oldest first
    rows = list(newest.values())
    keys = [k.lstrip("+~") for k in parent.data.params.get("sweep.keys", "").split(",") if k]
    for row in rows:
        row["values"] = split_name(row["run"])
        for key in row["values"]:
            if key not in keys:
                keys.append(key)
    return rows, keys


def markdown(parent, rows: list[dict], keys: list[str], metric: str, plots: list[str]) -> str:
    metrics = [m for m in ("test_accuracy", "test_loss", "val_accuracy", "val_loss") if any(r.get(m) is not None
                                                                                           for r in rows)]
    lines = [f"# Sweep {parent.info.run_name or parent.info.run_id}", "",
             f"_Written by `python -m cnnlab.report` from the MLflow store: parent run {parent.info.run_id}, "
             f"{len(rows)} jobs, swept: {', '.join(f'`{k}`' for k in keys) or '—'}; sorted by `{metric}`._", "",
             "| " + " | ".join([*keys, "status", *metrics, "note"]) + " |",
             "|" + "---|" * (len(keys) + len(metrics) + 2)]
    for r in rows:
        cells = [r["values"].get(k, "") for k in keys] + [r["status"]] + [short(r.get(m)) for m in metrics]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells + [r.get("note") or ""]) + " |")
    tags = parent.data.tags
    if "optuna.study_name" in tags:  # an Optuna study's sweep (hydra/sweeper=cnnlab_optuna)
        best = " ".join(f"{k[len('optuna.best.'):]}={v}" for k, v in sorted(tags.items())
                        if k.startswith("optuna.best."))
        lines[2:2] = [f"Optuna study `{tags['optuna.study_name']}` in `{tags.get('optuna.storage', '?')}`: "
                      f"{tags.get('optuna.trials', '?')} trials ({tags.get('optuna.trials_complete', '?')} complete, "
                      f"{tags.get('optuna.trials_pruned', '?')} pruned, {tags.get('optuna.trials_fail', '?')} failed)"
                      + (f"; best trial {tags['optuna.best_trial']}: {parent.data.metrics.get('best_value', 0):.4f} "
                         f"with {best}" if "optuna.best_trial" in tags else "") + ".", ""]
    from cnnlab.stats import seed_report

    seeds = seed_report(rows, metric)  # the sweep varied trainer.seed: cells with intervals, paired differences
    if seeds:
        lines += ["", seeds]
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(lines) + "\n"


def metric_plot(rows: list[dict], keys: list[str], metric: str, path: Path) -> None:
    """`metric` by the swept values: a heat map over two keys, else one bar per job."""
    from cnnlab.record.plots import pyplot

    plt = pyplot()
    value = {id(r): r.get(metric) for r in rows}
    if len(keys) == 2:
        ys = list(dict.fromkeys(r["values"].get(keys[0], "") for r in rows))
        xs = list(dict.fromkeys(r["values"].get(keys[1], "") for r in rows))
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in rows:
            if value[id(r)] is not None:
                grid[ys.index(r["values"].get(keys[0], "")), xs.index(r["values"].get(keys[1], ""))] = value[id(r)]
        fig, ax = plt.subplots(figsize=(1.6 * len(xs) + 3, 0.7 * len(ys) + 2))
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
        fig.colorbar(image, ax=ax, label=metric)
        for i in range(len(ys)):
            for j in range(len(xs)):
                ax.text(j, i, "—" if np.isnan(grid[i, j]) else short(float(grid[i, j])), ha="center", va="center")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set(xlabel=keys[1], ylabel=keys[0], title=metric)
    else:
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
        labels = [",".join(f"{k}={r['values'][k]}" for k in keys if k in r["values"]) or r["run"] for r in rows]
        ax.barh(range(len(rows)), [value[id(r)] if value[id(r)] is not None else 0 for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel=metric, title=f"{metric} by job (no bar: not measured)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(client, parent, out: Path, metric: str = "val_accuracy") -> list[dict]:
    """REPORT.md, results.csv and the plots of sweep `parent` into `out`; returns the rows."""
    from cnnlab.sweep.callback import comparison_plot, to_csv

    rows, keys = rows_of(client, parent)
    if not rows:
        raise LookupError(f"sweep {parent.info.run_id} has no jobs yet")
    descending = not metric.endswith("loss")
    rows.sort(key=lambda r: (r.get(metric) is None, -(r.get(metric) or 0) if descending else (r.get(metric) or 0)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.csv").write_text(to_csv(rows))
    comparison_plot(client, rows, out / "val_accuracy_curves.png")
    metric_plot(rows, keys, metric, out / f"{metric}_by_job.png")
    plots = ["val_accuracy_curves.png", f"{metric}_by_job.png"]
    (out / "REPORT.md").write_text(markdown(parent, rows, keys, metric, plots))
    return rows


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import DEFAULT_DB, redact_uri, resolve_uri, sqlite_path

    parser = argparse.ArgumentParser(prog="python -m cnnlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else mlruns/mlflow.db")
    parser.add_argument("--experiment", default="cnnlab")
    parser.add_argument("--sweep", default="last", help="the sweep's parent run id, or last (default)")
    parser.add_argument("--metric", default="val_accuracy", help="sort and plot by this final metric")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    uri = resolve_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        from cnnlab.record.tracking import end_dead_runs

        found = client.get_experiment_by_name(args.experiment)
        if found:  # a sweep or job whose process was killed outright is not shown RUNNING (cnnlab.record.liveness)
            end_dead_runs(client, [found.experiment_id])
        parent = find_sweep(client, args.experiment, args.sweep)
        out = args.out or (sqlite_path(uri) or DEFAULT_DB).parent / "reports" / parent.info.run_id
        rows = write_report(client, parent, out, args.metric)
    except Exception as e:  # an unknown run id, an empty store: one line
        print(f"error: report: {redact_uri(str(e).splitlines()[0] if str(e) else type(e).__name__)}",
              file=sys.stderr)
        return 2
    print(f"wrote {out / 'REPORT.md'} ({len(rows)} jobs of sweep {parent.info.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
