"""Issue 15's acceptance, measured: a run's model used through MLflow alone (pyfunc, `mlflow models serve`, registry).

    python benchmarks/usable_models.py                    # lenet5, adam, 300 steps (the acceptance)
    python benchmarks/usable_models.py --steps 100 --name my-model

One real `python run.py model=lenet5 optimizer=adam trainer.steps=300 tracking.register_as=<name>` into a
SQLite store in a temporary folder, then, with nothing from cnnlab:
1. `mlflow.pyfunc.load_model("runs:/<id>/model")` on the raw uint8 MNIST test set ($CNNLAB_DATA_DIR/mnist.npz):
   its accuracy against the run's logged test_accuracy (must agree within 0.002);
2. `mlflow models serve -m runs:/<id>/model --env-manager local` on 127.0.0.1: 10 test images POSTed to
   /invocations must get pyfunc's classes (the server is stopped by its process group's id);
3. the registered version (`MlflowClient.search_model_versions`).
Also what the export cost the training process: the run's `export_seconds` / `export_cpu_seconds` metrics
(`cnnlab.record.export.save_run_model` times itself), and the part of it that is importing mlflow.keras.
Prints a Markdown table; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_classes(model_uri: str, uri: str, x: np.ndarray, log: Path) -> tuple[list[int], float]:
    """Classes `mlflow models serve` answers for `x`, and the seconds until it answered /ping."""
    port, started = free_port(), time.perf_counter()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for _ in range(360):  # 180 s at most
                if server.poll() is not None:
                    sys.exit(f"mlflow models serve exited:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                sys.exit("mlflow models serve did not answer within 180 s")
            ready = time.perf_counter() - started
            body = json.dumps({"inputs": x.tolist()}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = np.asarray(json.loads(response.read())["predictions"])
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    return answer.argmax(axis=1).tolist(), ready


def mlflow_import_cpu() -> float:
    """CPU seconds `import mlflow.keras` takes in a fresh process that has Keras already: part of the export."""
    code = ("from cnnlab.backend import keras; import time; t = time.process_time(); import mlflow.keras; "
            "print(time.process_time() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return float(out.stdout.split()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--name", default="mnist-lenet5", help="tracking.register_as")
    a = p.parse_args()
    data_dir = os.environ.get("CNNLAB_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "mnist.npz").is_file():
        sys.exit("error: CNNLAB_DATA_DIR must name a folder with mnist.npz (the raw test images)")
    args = ["model=lenet5", "optimizer=adam", f"trainer.steps={a.steps}", f"tracking.register_as={a.name}"]
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "run.py", *args, f"tracking.uri={uri}"], cwd=REPO,
                             capture_output=True, text=True, timeout=3600)
        run_wall = time.perf_counter() - started
        if out.returncode:
            sys.exit(f"run.py failed ({out.returncode}):\n{out.stderr[-3000:]}")

        import mlflow.pyfunc
        from mlflow.tracking import MlflowClient

        os.environ["MLFLOW_TRACKING_URI"] = uri
        client = MlflowClient(tracking_uri=uri)
        run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
        model_uri = f"runs:/{run.info.run_id}/model"
        with np.load(Path(data_dir) / "mnist.npz") as f:
            x, y = f["x_test"][..., None], f["y_test"]  # raw uint8, as the file holds them
        model = mlflow.pyfunc.load_model(model_uri)
        classes = model.predict(x).argmax(axis=1)
        accuracy, logged = float(np.mean(classes == y)), run.data.metrics["test_accuracy"]
        served, ready = serve_classes(model_uri, uri, x[:10], Path(folder) / "serve.log")
        versions = client.search_model_versions(f"name = '{a.name}'")
        models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
        m = run.data.metrics
        checks = {
            "pyfunc accuracy within 0.002 of the logged test_accuracy": abs(accuracy - logged) <= 0.002,
            "served classes == pyfunc classes (10 images)": served == classes[:10].tolist(),
            "registered version exists": any(v.run_id == run.info.run_id for v in versions),
            "a READY logged model of the run": [(lm.source_run_id, str(lm.status)) for lm in models]
                                                == [(run.info.run_id, "READY")],
        }
        print(f"`python run.py {' '.join(args)}` into a temporary SQLite store; CPU: {cpu_model()}\n")
        print("| quantity | value |\n|---|---|")
        print(f"| run wall time (whole process) | {run_wall:.1f} s |")
        print(f"| logged test_accuracy | {logged:.4f} |")
        print(f"| pyfunc accuracy, raw uint8 test set (10,000) | {accuracy:.4f} (diff {accuracy - logged:+.4f}) |")
        print(f"| served classes (10 images) | {served} |")
        print(f"| pyfunc classes (10 images) | {classes[:10].tolist()} |")
        print(f"| `mlflow models serve` ready after | {ready:.1f} s |")
        print(f"| registered | {a.name} version {', '.join(str(v.version) for v in versions)} |")
        print(f"| export in the training process: wall / CPU | {m['export_seconds']:.2f} s / "
              f"{m['export_cpu_seconds']:.2f} s |")
        print(f"| of which `import mlflow.keras` (fresh process, after Keras), CPU | {mlflow_import_cpu():.2f} s |")
        print(f"| train_seconds / tracking_wait_seconds | {m['train_seconds']:.1f} s / "
              f"{m['tracking_wait_seconds']:.2f} s |")
        print()
        for name, ok in checks.items():
            print(f"- {'PASS' if ok else 'FAIL'}: {name}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
