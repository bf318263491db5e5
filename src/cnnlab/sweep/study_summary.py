"""The end of an Optuna study's sweep (`cnnlab.sweep.study`): the best trial printed, the study in the MLflow parent.

The parent run gets the trial counts and the best trial's number, value (`best_value`) and
parameters as tags, and under `optuna/` Optuna's matplotlib plots and `trials.csv`.
"""

from __future__ import annotations

import logging
import time
import warnings

log = logging.getLogger(__name__)


def override_value(v) -> str:
    """A sampled value as an override's value.

    >>> override_value(0.001), override_value(True), override_value("he"), override_value(3)
    ('0.001', 'true', 'he', '3')
    """
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def summarize(study, tracker, n_params: int) -> None:
    """Print the best trial; give the MLflow parent its value, parameters and Optuna's plots."""
    import tempfile
    from pathlib import Path

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                    TrialState.FAIL)}
    try:
        best = study.best_trial
    except ValueError:
        best = None
    print(f"optuna: study {study.study_name}: {len(trials)} trials ({counts['COMPLETE']} complete, "
          f"{counts['PRUNED']} pruned, {counts['FAIL']} failed)"
          + (f"; best trial {best.number}: value {best.value:.4f} with "
             + " ".join(f"{k}={override_value(v)}" for k, v in best.params.items()) if best else ""), flush=True)
    if tracker is None:
        return
    tags = {"optuna.trials": str(len(trials)), **{f"optuna.trials_{k.lower()}": str(v) for k, v in counts.items()}}
    if best:
        tags.update({"optuna.best_trial": str(best.number),
                     **{f"optuna.best.{k}": override_value(v) for k, v in best.params.items()}})
        tracker.log_metrics(0, {"best_value": best.value})
    tracker.set_tags(tags)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "optuna"
        folder.mkdir()
        study_plots(study, folder, n_params)
        (folder / "trials.csv").write_text(study.trials_dataframe().to_csv(index=False)
                                           if _has_pandas() else "")
        tracker.log_artifacts(folder.parent)


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def study_plots(study, folder, n_params: int) -> list[str]:
    """Optuna's matplotlib plots into `folder`: history; importances (>= 2 params, >= 4 complete); intermediates."""
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    from cnnlab.record.plots import pyplot

    plt = pyplot()
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = [("optimization_history.png", vis.plot_optimization_history),
             ("intermediate_values.png", vis.plot_intermediate_values)]
    if n_params >= 2 and complete >= 4:
        plots.append(("param_importances.png", vis.plot_param_importances))
    made = []
    for filename, plot in plots:
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
                ax = plot(study)
            fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(folder / filename, dpi=100)
            plt.close(fig)
            made.append(filename)
        except Exception as e:  # a plot is a nicety: say why it is missing
            log.warning(f"optuna: no {filename}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        log.debug(f"optuna: {filename} in {time.perf_counter() - started:.1f} s")
    return made
