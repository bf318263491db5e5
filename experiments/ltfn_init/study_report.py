"""The LTFN init study's report (REPORT.md here), built from what MLflow holds.

    python experiments/ltfn_init/study_report.py                           # into mlruns/reports/ltfn_init
    python experiments/ltfn_init/study_report.py --out experiments/ltfn_init  # update the committed report

Reads the newest `ltfn5_published` and `ltfn6_published` runs, the
children of the newest grid sweep and every run of the cells in SEED_CELLS
(one per seed; `cnnlab.stats` gives their intervals), and writes `results.json`, `REPORT.md`
and its plots into `--out`. The numbers come from the store; the tutorial's
published numbers it compares with are the constants in PUBLISHED, and the
prose around them is this study's (`python -m cnnlab.report` is the generic
report of any sweep).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

PUBLISHED = {  # "Learn TensorFlow Now" part 5: the numbers the tutorial printed
    "ltfn5_published": {"test_accuracy": 0.8188, "test_loss": 15083.0, "initial_loss": 979579.0},
}
GRID_INITS = ("normal", "normal_005", "glorot", "he", "lecun")


def record(run, name: str) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    return {
        "name": name,
        "init": tags.get("choice.init") or params.get("init.hidden.scheme"),
        "lr": float(params["optimizer.lr"]),
        "steps": int(params["trainer.steps"]),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "initial_loss": metrics.get("initial_loss"),
        "diverged": tags.get("diverged") == "true",
        "diverged_at_step": int(tags["diverged_at_step"]) if "diverged_at_step" in tags else None,
        "seed": int(params["trainer.seed"]) if "trainer.seed" in params else None,
        "status": run.info.status,
        "train_seconds": metrics.get("train_seconds"),
        "mlflow_run_id": run.info.run_id,
        "cpu_threads": tags.get("job.cpus", "all"),  # a sweep job's share of the cores (cnnlab.threads)
    }


def collect(client, experiment: str) -> tuple[list[dict], dict]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment {experiment!r} in this store: run the study first")
    records, runs = [], {}
    for name in ("ltfn5_published", "ltfn6_published"):
        found = client.search_runs([exp.experiment_id], max_results=100, order_by=["attributes.start_time DESC"],
                                   filter_string=f"attributes.run_name = '{name}' and attributes.status != 'RUNNING'")
        # the single run, not a job of seeds-part5 (same run name, under a sweep parent)
        run = next((r for r in found if "mlflow.parentRunId" not in r.data.tags), None)
        if run:
            records.append(record(run, name))
            runs[name] = run
    parents = client.search_runs([exp.experiment_id], max_results=100, order_by=["attributes.start_time DESC"],
                                 filter_string="tags.`cnnlab.sweep` = 'parent' and params.`sweep.keys` LIKE '%init%'")
    parent = next((r for r in parents if "trainer.seed" not in r.data.params["sweep.keys"]), None)  # not a seeds step
    if parent:
        children = client.search_runs([exp.experiment_id], max_results=1000,
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                    "and attributes.status != 'RUNNING'",
                                      order_by=["attributes.start_time DESC"])
        # a job re-run after a sweep resume has two children: the newest one counts
        children = list({c.info.run_name: c for c in reversed(children)}.values())
        cells = [record(c, "") for c in children]
        for cell in cells:
            cell["name"] = f"grid/init={cell['init']},lr={cell['lr']:g}"
        order = {init: i for i, init in enumerate(GRID_INITS)}
        records += sorted(cells, key=lambda c: (order.get(c["init"], 99), c["lr"]))
        runs["grid_parent"] = parent
        by_id = {c.info.run_id: c for c in children}
        runs["grid_by_init"] = {c["init"]: by_id[c["mlflow_run_id"]] for c in cells}
    return records, runs


SEED_CELLS = (  # (label, init, lr, steps): the cells the findings rest on, each run with seeds 0-4 (run_study.sh)
    ("part 5: N(0,1), lr 1e-7, 5,000 steps", "normal", 1e-7, 5000),
    ("part 6: He, lr 1e-3", "he", 1e-3, 1000),
    ("best He: lr 0.05", "he", 5e-2, 1000),
    ("best Glorot: lr 0.05", "glorot", 5e-2, 1000),
    ("N(0,1), lr 1e-7", "normal", 1e-7, 1000),
)
PAIRS = ((2, 3, "He vs Glorot at their best learning rate"),
         (1, 4, "part 6's init and learning rate vs N(0,1) at 1e-7, same 1,000 steps"))


def seed_runs(client, experiment_id: str) -> dict[tuple, dict[int, dict]]:
    """{(init, lr, steps): {seed: record}} over every FINISHED training run (published, grid and seeds steps):
    a setting run twice with one seed counts once, its newest run."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000,
                              order_by=["attributes.start_time ASC"])
    out: dict[tuple, dict[int, dict]] = {}
    for run in runs:
        if run.data.tags.get("cnnlab.sweep") == "parent" or "optimizer.lr" not in run.data.params:
            continue
        r = record(run, run.info.run_name)
        if r["seed"] is not None and r["test_accuracy"] is not None:
            out.setdefault((r["init"], r["lr"], r["steps"]), {})[r["seed"]] = r
    return out


def seed_section(cells: dict[tuple, dict[int, dict]]) -> tuple[list[str], list[dict]]:
    """The seeds table, paired differences and their sentences (markdown lines), and the runs they use."""
    from cnnlab.stats import interval, paired

    found = [(label, cells.get((init, lr, steps), {})) for label, init, lr, steps in SEED_CELLS]
    if not any(len(by_seed) >= 2 for _, by_seed in found):
        return [], []
    lines = ["", "## Seeds: the conclusions with their intervals", "",
             "The cells the findings rest on, each run with `trainer.seed` 0-4 (seed 0 is the run above; "
             "`run_study.sh seeds-*`). The seed draws the initial weights; the batches are the same consecutive "
             "ones in every run. Seeds 1-4 ran as sweep jobs on one CPU thread each; part 5's seed 0 is the single "
             "run on all cores, which changes only the float32 rounding (see Reproducibility above). Mean, sample "
             "standard deviation and the 95% confidence interval of the mean (t distribution) of the test "
             "accuracy:", "",
             "| cell | seeds | mean | std | 95% CI | min – max |", "|---|---|---|---|---|---|"]
    used = []
    for label, by_seed in found:
        acc = [r["test_accuracy"] for r in by_seed.values()]
        used += list(by_seed.values())
        if not acc:
            lines.append(f"| {label} | 0 | not run yet | | | |")
            continue
        s = interval(acc)
        ci = f"[{_pct(s['lo'])}, {_pct(s['hi'])}]" if s["lo"] is not None else "—"
        std = "—" if s["std"] is None else f"{100 * s['std']:.2f} points"
        lines.append(f"| {label} | {s['n']} | {_pct(s['mean'])} | {std} | {ci} | {_pct(min(acc))} – {_pct(max(acc))} |")
    lines += ["", "Paired differences in test accuracy (the same seeds in both cells):", "",
              "| comparison | seeds | mean difference | 95% CI | CI excludes 0 |", "|---|---|---|---|---|"]
    for a, b, what in PAIRS:
        d = paired({k: r["test_accuracy"] for k, r in found[a][1].items()},
                   {k: r["test_accuracy"] for k, r in found[b][1].items()})
        if d["n"] >= 2:
            lines.append(f"| {found[a][0]} − {found[b][0]} | {d['n']} | {100 * d['mean']:+.2f} points | "
                         f"[{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] | "
                         f"{'yes' if d['lo'] > 0 or d['hi'] < 0 else 'no'} |")
    lines += ["", *seed_findings(found)]
    return lines, used


def seed_findings(found) -> list[str]:
    """The findings restated over seeds, each with its interval."""
    from cnnlab.stats import interval, paired

    out = []
    part5 = list(found[0][1].values())
    if len(part5) >= 2:
        s = interval([r["test_accuracy"] for r in part5])
        loss = interval([r["test_loss"] for r in part5])
        published = PUBLISHED["ltfn5_published"]
        inside = s["lo"] <= published["test_accuracy"] <= s["hi"]
        out.append(f"- **Part 5 over {s['n']} seeds**: {_pct(s['mean'])} test accuracy, 95% CI "
                   f"[{_pct(s['lo'])}, {_pct(s['hi'])}]; the published 81.88% lies "
                   + ("inside it." if inside else "outside it.")
                   + f" The test loss, which a few huge logits dominate: mean {_num(loss['mean'])}, range "
                   f"{_num(min(r['test_loss'] for r in part5))} – {_num(max(r['test_loss'] for r in part5))} "
                   "(published 15,083).")
    for a, b, what in PAIRS:
        d = paired({k: r["test_accuracy"] for k, r in found[a][1].items()},
                   {k: r["test_accuracy"] for k, r in found[b][1].items()})
        if d["n"] >= 2:
            verdict = ("a real difference at these seeds" if d["lo"] > 0 or d["hi"] < 0
                       else "not distinguishable from no difference at these seeds")
            out.append(f"- **{what[0].upper() + what[1:]}** ({d['n']} paired seeds): {100 * d['mean']:+.2f} points, "
                       f"95% CI [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]: {verdict}.")
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _num(v) -> str:
    return "—" if v is None else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def diag_series(client, run) -> dict:
    """The init-diagnostics dict of a run, rebuilt from its metrics in layer order."""
    from omegaconf import OmegaConf

    local = client.download_artifacts(run.info.run_id, "config.yaml")
    layers = list(OmegaConf.load(local).model.layers)
    m = run.data.metrics
    return {"initial_loss": m.get("initial_loss"),
            "layers": [{"name": n, "preact_std": m.get(f"init.preact_std.{n}"), "act_std": m[f"init.act_std.{n}"]}
                       for n in layers if f"init.act_std.{n}" in m]}


def curves_plot(client, runs: dict, path: Path) -> None:
    from cnnlab.record.plots import pyplot

    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("ltfn5_published", "ltfn6_published"):
        if name not in runs:
            continue
        rid = runs[name].info.run_id
        for ax, metric, style in ((ax_loss, "train_loss", "-o"), (ax_acc, "val_accuracy", "-s")):
            hist = sorted(client.get_metric_history(rid, metric), key=lambda h: h.step)
            ax.plot([h.step for h in hist], [h.value for h in hist], style, markersize=3, label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (mean over each eval interval)", yscale="log")
    ax_acc.set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid_plot(cells: list[dict], path: Path) -> None:
    from cnnlab.record.plots import pyplot

    plt = pyplot()
    inits = [i for i in GRID_INITS if any(c["init"] == i for c in cells)]
    lrs = sorted({c["lr"] for c in cells})
    acc = np.full((len(inits), len(lrs)), np.nan)
    for c in cells:
        if c["test_accuracy"] is not None:
            acc[inits.index(c["init"]), lrs.index(c["lr"])] = c["test_accuracy"]
    fig, ax = plt.subplots(figsize=(1.6 * len(lrs) + 3, 0.7 * len(inits) + 2))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightcoral")  # diverged cells
    image = ax.imshow(np.ma.masked_invalid(acc), vmin=0, vmax=1, cmap=cmap)
    fig.colorbar(image, ax=ax, label="test accuracy")
    for c in cells:
        i, j = inits.index(c["init"]), lrs.index(c["lr"])
        dark = not c["diverged"] and c["test_accuracy"] is not None and c["test_accuracy"] < 0.6
        text = f"diverged\nat step {c['diverged_at_step']}" if c["diverged"] else _pct(c["test_accuracy"])
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(inits)), inits)
    ax.set(xlabel="SGD learning rate", ylabel="init", title=f"test accuracy after {cells[0]['steps']:,} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COMMANDS = """\
export CNNLAB_DATA_DIR=$PWD/../shared/datasets     # offline machines: the folder holding mnist.npz
python run.py +experiment=ltfn5_published          # part 5: N(0,1), SGD 1e-7, 5,000 steps
python run.py +experiment=ltfn6_published          # part 6: He + Glorot, SGD 1e-3, 1,000 steps
python run.py -m +experiment=ltfn_init_grid hydra.launcher.n_jobs=2   # 5 inits x 3 learning rates, 1,000 steps each
experiments/ltfn_init/run_study.sh seeds-he seeds-glorot seeds-normal seeds-part5   # seeds 1-4 of the key cells
python experiments/ltfn_init/study_report.py --out experiments/ltfn_init   # this file, results.json, plots"""


def markdown(records: list[dict], plots: list[str], diags: dict, seeds: list[str] = ()) -> str:
    by_name = {r["name"]: r for r in records}
    cells = [r for r in records if r["name"].startswith("grid/")]
    lines = [
        "# The LTFN weight-init study",
        "",
        "_Written by `experiments/ltfn_init/study_report.py` from the MLflow store; every number below is a logged "
        "metric or, where it says so, the tutorial's published number._",
        "",
        "## Question",
        "",
        "\"Learn TensorFlow Now\" part 5 trained a 4-conv MNIST network (321,738 parameters) with every weight "
        "drawn from N(0, 1) and reached 81.88% test accuracy; part 6 switched to He/Glorot init and trained "
        "properly. But part 6 also raised the learning rate from 1e-7 to 1e-3 and cut the budget from 5,000 to "
        "1,000 steps. Which change did what? We reproduce both published settings, then vary only init and "
        "learning rate on a grid with everything else fixed.",
        "",
        "## Commands",
        "",
        "```bash", COMMANDS, "```",
        "",
        "Every run uses `trainer.seed=0` and `trainer.deterministic=true`, batch 100, consecutive batches of the "
        "55,000-image training split (`trainer.shuffle=false`); the last 5,000 training images validate.",
        "",
        "## The published settings",
        "",
        "| run | init | lr | steps | initial loss | test loss | test accuracy | published test accuracy | "
        "published test cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("ltfn5_published", "ltfn6_published"):
        r = by_name.get(name)
        if not r:
            lines.append(f"| {name} | not run yet | | | | | | | |")
            continue
        pub = PUBLISHED.get(name, {})
        lines.append(f"| {name} | {r['init']} | {r['lr']:g} | {r['steps']:,} | {_num(r['initial_loss'])} | "
                     f"{_num(r['test_loss'])} | {_pct(r['test_accuracy'])} | {_pct(pub.get('test_accuracy'))} | "
                     f"{_num(pub.get('test_loss'))} |")
    if cells:
        lrs = sorted({c["lr"] for c in cells})
        lines += ["", f"## The grid: test accuracy after {cells[0]['steps']:,} steps", "",
                  "| init | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | initial loss |",
                  "|---|" + "---|" * (len(lrs) + 1)]
        for init in GRID_INITS:
            row = {c["lr"]: c for c in cells if c["init"] == init}
            if not row:
                continue
            shown = [("diverged at step %d" % row[lr]["diverged_at_step"]) if row.get(lr, {}).get("diverged")
                     else _pct(row[lr]["test_accuracy"]) if lr in row else "—" for lr in lrs]
            initial = next(iter(row.values()))["initial_loss"]
            lines.append(f"| {init} | " + " | ".join(shown) + f" | {_num(initial)} |")
        lines += ["", "`normal` is N(0, 1) (the LTFN problem), `normal_005` is N(0, 0.05²) (Keras's RandomNormal "
                  "default), `glorot` is Glorot uniform, `he` is He normal for the ReLU layers with Glorot uniform "
                  "for the output layer (the LTFN fix), `lecun` is LeCun normal."]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if diags:
        lines += ["", "## Activation scale at initialisation (one batch of 100 training images)", "",
                  "Standard deviation of each layer's output; in brackets, the factor by which the layer changed "
                  "the scale of its input (max pooling raises it a little, flatten not at all).", "",
                  "| layer | " + " | ".join(diags) + " |", "|---|" + "---|" * len(diags)]
        names = [r["name"] for r in next(iter(diags.values()))["layers"]]
        for i, layer in enumerate(names):
            cells_ = []
            for diag in diags.values():
                row = diag["layers"][i]
                prev = diag["layers"][i - 1]["act_std"] if i else None
                factor = f" (×{row['act_std'] / prev:.3g})" if prev else ""
                cells_.append(f"{row['act_std']:.4g}{factor}")
            lines.append(f"| {layer} | " + " | ".join(cells_) + " |")
    lines += ["", "## Findings", ""] + findings(by_name, cells)
    lines += list(seeds)
    lines += ["", "## Runs", "", "`results.json` lists every run with its MLflow run id; open them with "
              "`python -m cnnlab.ui --experiment ltfn_init`."]
    return "\n".join(lines) + "\n"


def findings(by_name: dict, cells: list[dict]) -> list[str]:
    """Sentences from the results; the published LTFN numbers they compare with are the constants in PUBLISHED."""
    out = []
    p5, p6 = by_name.get("ltfn5_published"), by_name.get("ltfn6_published")
    if p5 and p5["test_accuracy"] is not None:
        gap = 100 * (p5["test_accuracy"] - PUBLISHED["ltfn5_published"]["test_accuracy"])
        out.append(f"- **Part 5 reproduced**: N(0,1) weights with SGD at 1e-7 reach {_pct(p5['test_accuracy'])} "
                   f"test accuracy after {p5['steps']:,} steps ({gap:+.2f} points from the published 81.88%), with "
                   f"a test loss of {_num(p5['test_loss'])} (published cost ≈ 15,083) and an initial loss of "
                   f"{_num(p5['initial_loss'])} (published ≈ 979,579). The losses depend on the particular N(0,1) "
                   "draw (ours is seed 0; the tutorial's draw is not known), because a handful of huge logits "
                   "dominate them.")
    if p6 and p6["test_accuracy"] is not None:
        out.append(f"- **Part 6 reproduced**: He + Glorot with SGD at 1e-3 reach {_pct(p6['test_accuracy'])} after "
                   f"{p6['steps']:,} steps, from an initial loss of {_num(p6['initial_loss'])} (log 10 ≈ 2.30 is "
                   "chance level: the logits start small).")
    if cells:
        def cell(init, lr):
            return next((c for c in cells if c["init"] == init and c["lr"] == lr), None)

        normal_div = [c for c in cells if c["init"] == "normal" and c["diverged"]]
        if normal_div:
            out.append("- **N(0,1) needs a tiny learning rate**: at " + ", ".join(
                f"lr {c['lr']:g}" for c in normal_div) + " it diverges (loss NaN/inf or above 1e12) within "
                f"{max(c['diverged_at_step'] for c in normal_div)} steps, so part 5 had to use 1e-7; at that rate "
                "every other init barely moves in the same budget.")
        trained = [c for c in cells if c["test_accuracy"] is not None]
        if trained:
            best = max(trained, key=lambda c: c["test_accuracy"])
            per_init = []
            for init in ("he", "glorot", "lecun", "normal_005"):
                ok = [c for c in trained if c["init"] == init]
                if ok:
                    b = max(ok, key=lambda c: c["test_accuracy"])
                    per_init.append(f"{init} {_pct(b['test_accuracy'])} at lr {b['lr']:g}")
            out.append(f"- **Best cell**: init {best['init']} at lr {best['lr']:g}: {_pct(best['test_accuracy'])} "
                       f"(the best of each init: {'; '.join(per_init)}).")
        n7, h7, h3 = cell("normal", 1e-7), cell("he", 1e-7), cell("he", 1e-3)
        if n7 and h7 and h3 and None not in (n7["test_accuracy"], h7["test_accuracy"], h3["test_accuracy"]):
            out.append(f"- **Separating the causes** (same 1,000-step budget): changing only the init at lr 1e-7 "
                       f"does not help — N(0,1) {_pct(n7['test_accuracy'])}, He {_pct(h7['test_accuracy'])} (N(0,1)'s "
                       "huge gradients make 1e-7 an effectively large step; He's do not). Changing only the "
                       "learning rate to 1e-3 makes N(0,1) diverge. Only the two together, as part 6 did, train: "
                       f"He at 1e-3 gives {_pct(h3['test_accuracy'])}. The init is what makes a normal learning "
                       "rate possible; the learning rate is what then trains.")
        p6 = by_name.get("ltfn6_published")
        if p6 and h3 and p6["test_accuracy"] is not None:
            same = p6["test_accuracy"] == h3["test_accuracy"] and p6["test_loss"] == h3["test_loss"]
            threads = "" if same or h3["cpu_threads"] == p6["cpu_threads"] else (
                f" The sweep job ran on {h3['cpu_threads']} CPU thread(s) (tag `job.cpus`) and the single run on "
                f"{p6['cpu_threads']}: TensorFlow's CPU kernels split their sums by thread, so the float32 "
                "rounding differs; at one thread count a `trainer.deterministic=true` run repeats bit for bit.")
            out.append(f"- **Reproducibility**: the grid cell he/1e-3 is part 6's setting, run again in a sweep "
                       f"worker: test accuracy {_pct(h3['test_accuracy'])}, test loss {h3['test_loss']:.6g} vs "
                       f"{_pct(p6['test_accuracy'])}, {p6['test_loss']:.6g} for `ltfn6_published` — "
                       + ("identical." if same else "not identical." + threads))
    out.append("- **Why** (the activation-scale table and `init_diagnostics.png`): with N(0,1) weights each ReLU "
               "conv layer multiplies the activation scale by about sqrt(fan_in/2) (fan_in = 9 × input channels: "
               "sqrt(288) ≈ 17 for conv2 and conv3, sqrt(576) = 24 for conv4), so the logits start in the hundreds "
               "of thousands and the softmax saturates; He scaling keeps the factor near 1. Glorot uniform ignores "
               "the ReLU's halving, so its activations shrink layer by layer, which is why it is the slowest init "
               "at lr 1e-3.")
    return out


def write_report(client, experiment: str, out: Path) -> list[dict]:
    from cnnlab.record.plots import plot_diagnostics

    records, runs = collect(client, experiment)
    seeds, used = seed_section(seed_runs(client, client.get_experiment_by_name(experiment).experiment_id))
    known = {r["mlflow_run_id"] for r in records}
    records += [{**r, "name": f"seeds/init={r['init']},lr={r['lr']:g},steps={r['steps']},seed={r['seed']}"}
                for r in used if r["mlflow_run_id"] not in known]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")
    plots = []
    diags = {}
    if "ltfn5_published" in runs and "ltfn6_published" in runs:
        diags = {"normal": diag_series(client, runs["ltfn5_published"]),
                 "he": diag_series(client, runs["ltfn6_published"])}
    for init, run in runs.get("grid_by_init", {}).items():
        diags.setdefault(init, diag_series(client, run))
    if diags:
        plot_diagnostics(diags, out / "init_diagnostics.png", "ltfn5 at initialisation, one batch of 100 MNIST images")
        plots.append("init_diagnostics.png")
    if any(name in runs for name in ("ltfn5_published", "ltfn6_published")):
        curves_plot(client, runs, out / "published_curves.png")
        plots.append("published_curves.png")
    cells = [r for r in records if r["name"].startswith("grid/")]
    if cells:
        grid_plot(cells, out / "grid_test_accuracy.png")
        plots.append("grid_test_accuracy.png")
    (out / "REPORT.md").write_text(markdown(records, plots, diags, seeds))
    return records


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars between our lines
    from mlflow.tracking import MlflowClient

    from cnnlab.record.store import DEFAULT_DB

    parser = argparse.ArgumentParser(prog="study_report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=f"sqlite:///{DEFAULT_DB}")
    parser.add_argument("--experiment", default="ltfn_init")
    parser.add_argument("--out", type=Path, default=DEFAULT_DB.parent / "reports" / "ltfn_init",
                        help="default: mlruns/reports/ltfn_init (not in git); experiments/ltfn_init updates the "
                             "committed report")
    args = parser.parse_args(argv)
    records = write_report(MlflowClient(tracking_uri=args.tracking_uri), args.experiment, args.out)
    print(f"wrote {args.out / 'REPORT.md'} and results.json ({len(records)} runs)")


if __name__ == "__main__":
    main()
