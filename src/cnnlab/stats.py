"""Seeds as statistics: mean, standard deviation and a 95% t-interval per cell; paired differences on shared seeds.

A sweep that varies `trainer.seed` is a sample per cell (the other swept keys). Student's t quantiles
come from a table (df 1-30, then interpolated in 1/df to the normal's 1.96): no scipy needed.

Example:
    >>> s = interval([0.90, 0.92, 0.91])
    >>> round(s["mean"], 3), round(s["std"], 3), round(s["lo"], 4), round(s["hi"], 4)
    (0.91, 0.01, 0.8852, 0.9348)
    >>> d = paired({1: 0.92, 2: 0.93, 3: 0.91}, {1: 0.90, 2: 0.92, 3: 0.90})
    >>> d["n"], round(d["mean"], 4), round(d["lo"], 4), round(d["hi"], 4)
    (3, 0.0133, -0.001, 0.0277)
    >>> split_name("init=he,optimizer.lr=0.01,+model.layers.conv1.dilation_rate=2")
    {'init': 'he', 'optimizer.lr': '0.01', 'model.layers.conv1.dilation_rate': '2'}
"""

from __future__ import annotations

import math

SEED_KEY = "trainer.seed"

# two-sided 95%: the 0.975 quantile of Student's t with df degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
Z975 = 1.959964


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t (3 decimals; beyond 30, linear in 1/df between table rows).

    >>> t975(4), t975(30), round(t975(1000), 3)
    (2.776, 2.042, 1.962)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom {df} < 1")
    if df in T975:
        return T975[df]
    rows = sorted(T975.items()) + [(math.inf, Z975)]
    for (d0, t0), (d1, t1) in zip(rows, rows[1:]):
        if d0 < df < d1:
            x, x0, x1 = 1 / df, 1 / d0, (1 / d1 if d1 != math.inf else 0.0)
            return t0 + (t1 - t0) * (x - x0) / (x1 - x0)
    return Z975


def interval(values) -> dict:
    """n, mean, sample std and the 95% confidence interval of the mean (std/lo/hi None below n=2)."""
    xs = [float(v) for v in values]
    n = len(xs)
    mean = sum(xs) / n if n else None
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "lo": None, "hi": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def paired(a: dict, b: dict) -> dict:
    """The mean of a - b over the seeds both cells ran, with its 95% interval (a paired t-interval)."""
    common = sorted(set(a) & set(b), key=str)
    return {**interval([a[s] - b[s] for s in common]), "seeds": common}


def split_name(run_name: str) -> dict[str, str]:
    """A sweep child's name ('init=he,optimizer.lr=0.01') as {key: value}; `+`/`~` prefixes dropped."""
    out = {}
    for part in (run_name or "").split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.lstrip("+~")] = value
        elif out:  # a value with a comma in it (a list): belongs to the previous key
            last = next(reversed(out))
            out[last] += "," + part
    return out


def seed_cells(rows: list[dict], metric: str, seed_key: str = SEED_KEY) -> dict[tuple, dict]:
    """{cell: {seed: value}}: a cell is the run's other swept values; FINISHED runs with the metric only."""
    cells: dict[tuple, dict] = {}
    for row in rows:
        values = row.get("values") or split_name(row.get("run", ""))
        if seed_key not in values or row.get("status", "FINISHED") != "FINISHED" or row.get(metric) is None:
            continue
        cell = tuple((k, v) for k, v in values.items() if k != seed_key)
        cells.setdefault(cell, {})[values[seed_key]] = float(row[metric])
    return cells


def _num(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _label(cell: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell) or "(all runs)"


def seed_report(rows: list[dict], metric: str = "val_accuracy", seed_key: str = SEED_KEY) -> str:
    """Markdown: per cell n, mean, std, 95% CI of `metric` over seeds; then the best cell minus each other cell,
    paired on their shared seeds. Empty if no run varies the seed.

    >>> rows = [{"run": f"init={i},trainer.seed={s}", "status": "FINISHED", "val_accuracy": v}
    ...         for i, s, v in [("he", 1, .9), ("he", 2, .92), ("he", 3, .91), ("normal", 1, .5), ("normal", 2, .6),
    ...                         ("normal", 3, .55)]]
    >>> print(seed_report(rows).splitlines()[4])
    | init=he | 3 | 0.9100 | 0.0100 | [0.8852, 0.9348] |
    """
    cells = seed_cells(rows, metric, seed_key)
    if not cells:
        return ""
    stats = {cell: interval(list(by_seed.values())) for cell, by_seed in cells.items()}
    order = sorted(cells, key=lambda c: -stats[c]["mean"] if not metric.endswith("loss") else stats[c]["mean"])
    lines = [f"### {metric} over seeds ({seed_key}): mean, standard deviation, 95% confidence interval (t)", "",
             "| cell | seeds | mean | std | 95% CI |", "|---|---|---|---|---|"]
    for cell in order:
        s = stats[cell]
        ci = f"[{_num(s['lo'])}, {_num(s['hi'])}]" if s["lo"] is not None else "—"
        lines.append(f"| {_label(cell)} | {s['n']} | {_num(s['mean'])} | {_num(s['std'])} | {ci} |")
    best, pairs = order[0], []
    for other in order[1:]:
        d = paired(cells[best], cells[other])
        if d["n"] >= 2:
            excludes = d["lo"] > 0 or d["hi"] < 0
            pairs.append(f"| {_label(best)} − {_label(other)} | {d['n']} | {_num(d['mean'])} | "
                         f"[{_num(d['lo'])}, {_num(d['hi'])}] | {'yes' if excludes else 'no'} |")
    if pairs:
        lines += ["", f"Paired differences in {metric} (the best cell minus each other, on the seeds both ran):", "",
                  "| difference | seeds | mean | 95% CI | CI excludes 0 |", "|---|---|---|---|---|", *pairs]
    return "\n".join(lines)
