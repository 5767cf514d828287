"""What a user waits for in the app, measured through a real `python app.py` server.

    .venv/bin/python scripts/measure_app.py [--home DIR] [--preset cpu-demo] [--skip-compare] [--iterations N]

Starts the app as a subprocess on a free port with --home DIR (default: a new empty folder, a fresh
install's home; SEQMATCH_KERNEL_CACHE=$(mktemp -d) also makes it build the C kernels again), then
through gradio_client:
1. Distil tab Start, cold (the first Start in the home) and warm (a second Start of the same preset
   in the same app): seconds to the first image and to the first learned image (the first that
   differs from it: a real distillation step), the stage-1 experts found ready (cached or shipped)
   of those needed, and the latency of /poll while the run trains; each run is stopped.
2. Compare tab Start: seconds until both runs are done, each run's phase_seconds, accuracies.
Prints one report and a line with the cold and warm times; the runs stay in DIR/runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app_server import serve_app  # noqa: E402

from views.forms import FormValues, form_defaults  # noqa: E402


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def experts_ready(home: Path, run_id: str) -> str:
    """'ready/needed' stage-1 experts of a run that is distilling S1 (its status then holds the experts 1 phase's)."""
    status = json.loads((home / "runs" / run_id / "status.json").read_text())
    return f"{status.get('experts_cached')}/{status.get('experts_total')}"


def measure_start(client: Client, home: Path, preset: str) -> dict:
    """Press Start on the Distil tab and poll until the first learned image; then stop the run."""
    values = form_defaults(preset)
    form = [getattr(values, name) for name in FormValues.fields()]
    clicked = time.perf_counter()
    run_id, _ = client.predict(*form, None, api_name="/start")
    first = changed = experts = None
    seen: set[str] = set()
    latencies = []
    while changed is None and time.perf_counter() - clicked < 300:
        asked = time.perf_counter()
        _, image, _, _ = client.predict(run_id, api_name="/poll")
        latencies.append(time.perf_counter() - asked)
        if isinstance(image, str):
            seen.add(digest(image))
            first = first or time.perf_counter() - clicked
            if len(seen) >= 2:
                changed = time.perf_counter() - clicked
                experts = experts_ready(home, run_id)
        time.sleep(0.2)
    for _ in range(20):  # more polls while it trains, for the latency figure
        asked = time.perf_counter()
        client.predict(run_id, api_name="/poll")
        latencies.append(time.perf_counter() - asked)
        time.sleep(0.2)
    client.predict(run_id, api_name="/stop")
    latencies.sort()
    return {"run": run_id, "first_image_s": first, "first_learned_image_s": changed, "experts_ready": experts,
            "polls": len(latencies),
            "poll_median_s": statistics.median(latencies), "poll_p90_s": latencies[int(0.9 * (len(latencies) - 1))]}


def measure_compare(client: Client, home: Path, preset: str, iterations: int | None) -> dict:
    values = form_defaults(preset)
    clicked = time.perf_counter()
    mtt, seq, _ = client.predict(preset, values.ipc, values.num_subsets, iterations or values.iterations,
                                 api_name="/compare_start")
    report = {}
    for run_id in (mtt, seq):
        status_path = home / "runs" / run_id / "status.json"
        while True:
            status = json.loads(status_path.read_text()) if status_path.exists() else {}
            if status.get("state") in ("done", "failed", "stopped"):
                break
            time.sleep(2)
        result_path = home / "runs" / run_id / "eval.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        report[run_id] = {"state": status["state"], "done_after_s": round(time.perf_counter() - clicked, 1),
                          "phase_seconds": status.get("phase_seconds"),
                          "synthetic": result.get("synthetic"), "random_real": result.get("random_real")}
    report["total_s"] = round(time.perf_counter() - clicked, 1)
    return report


def seconds(value: float | None) -> str:
    """A measured time for the summary line; None (not within the polling limit) said in words."""
    return "none within 300 s" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="the app's home (default: a new empty folder)")
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per subset (default: the preset's)")
    args = parser.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="seqmatch-measure-"))).resolve()
    print(f"home: {home}", flush=True)
    with serve_app(home) as url:
        client = Client(url, verbose=False)
        starts = {}
        for kind in ("cold", "warm"):
            starts[kind] = measure_start(client, home, args.preset)
            print(json.dumps({f"{kind} start": starts[kind]}, indent=1), flush=True)
            time.sleep(3)  # let the stopped run release the worker
        print(f"first learned image after Start ({args.preset}): " + ", ".join(
            f"{kind} {seconds(start['first_learned_image_s'])} (experts ready {start['experts_ready']})"
            for kind, start in starts.items()), flush=True)
        if not args.skip_compare:
            report = measure_compare(client, home, args.preset, args.iterations)
            print(json.dumps({"compare": report}, indent=1))


if __name__ == "__main__":
    main()
