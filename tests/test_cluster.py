"""Jobs on a real Dask LocalCluster (2 worker processes, 127.0.0.1, no dashboard) against local threads."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from configs import tiny_run_config

from seqmatch_engine.core import paths
from seqmatch_engine.core.control import RunControl, StopRequested
from seqmatch_engine.interfaces import cli
from seqmatch_engine.orchestration.driver import Distiller, EventKind
from seqmatch_engine.orchestration.executors import ClusterError, DaskExecutor, LocalExecutor
from seqmatch_engine.storage.records import RunState
from seqmatch_engine.storage.runs import RunFolder

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as local, distributed.Client(local) as client:
        yield client


def config():
    return tiny_run_config("cluster", 2, (1, 1), select_every=2)  # experts, retrained experts, selection nets


def run_with(home, executor, observer=None, control=None):
    run = RunFolder.create(paths.runs_root(home), config())
    return run, Distiller(run, paths.experts_root(home), observer, control, executor=executor).run()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return run_with(tmp_path_factory.mktemp("local"), LocalExecutor(2))


def trajectories(home):
    return {p.relative_to(home): p.read_bytes() for p in sorted(paths.experts_root(home).rglob("expert_*.safetensors"))}


def test_dask_gives_the_local_bits(cluster, local_run, tmp_path):
    run, result = run_with(tmp_path, DaskExecutor.from_client(cluster))
    local, local_result = local_run
    assert result == local_result  # evaluation accuracies, selection included
    for ours, theirs in zip(run.subsets(), local.subsets(), strict=True):
        assert torch.equal(ours.images, theirs.images) and ours.lr == theirs.lr
    home = local.path.parent.parent
    assert trajectories(tmp_path) == trajectories(home)  # every expert file, byte for byte
    assert "dask" in run.status().executor


def test_a_worker_killed_mid_job_changes_nothing(cluster, local_run, tmp_path):
    killed = []

    def kill_a_worker(event):
        if event.kind == EventKind.PROGRESS and event.data["task"] == "experts" and not killed:
            pids = cluster.run(os.getpid)
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    run, result = run_with(tmp_path, DaskExecutor.from_client(cluster), kill_a_worker)
    assert killed and result == local_run[1]
    lost = [m.text for m in run.status().messages if "was lost" in m.text]
    assert lost and lost[0].startswith("the Dask worker tcp://127.0.0.1:") and "(same results, more time)" in lost[0]
    assert all(torch.equal(a.images, b.images) for a, b in zip(run.subsets(), local_run[0].subsets(), strict=True))
    assert not list(paths.experts_root(tmp_path).rglob("*.tmp"))
    cluster.wait_for_workers(2, timeout=60)


def test_stop_cancels_the_cluster_jobs_and_resume_finishes_them(cluster, local_run, tmp_path):
    control = RunControl()

    def stop_at_first_epoch(event):
        if event.kind == EventKind.PROGRESS and event.data["task"] == "experts" and event.data["done"] > 0:
            control.stop()

    run, result = run_with(tmp_path, DaskExecutor.from_client(cluster), stop_at_first_epoch, control)
    assert result is None and run.status().state == RunState.STOPPED
    deadline = time.time() + 30
    while cluster.processing() and any(cluster.processing().values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(cluster.processing().values()), "the cluster still runs the stopped jobs"
    resumed = Distiller(RunFolder(run.path), paths.experts_root(tmp_path), executor=DaskExecutor.from_client(cluster))
    assert resumed.run() == local_run[1]


def test_fake_gpu_resources_pack_jobs_per_worker(tmp_path):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40, resources={"GPU": 1}) as local, \
            distributed.Client(local) as client:
        spans = {}
        for share in (0.5, 1.0):
            executor = DaskExecutor.from_client(client, gpu_share=share)
            spans[share] = [span for _, span in executor.map(sleeping_job, [0.6, 0.6])]
        (a, b), (c, d) = spans[0.5], spans[1.0]
        assert a[0] < b[1] and b[0] < a[1], "GPU=0.5 jobs should share the worker's GPU=1 and overlap"
        assert c[1] <= d[0] or d[1] <= c[0], "GPU=1 jobs must run one after the other"


def sleeping_job(seconds: float, on_epoch) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    on_epoch(1)
    return start, time.time()


def test_an_unreachable_scheduler_names_the_address_and_the_fix(capsys, monkeypatch):
    monkeypatch.setattr(DaskExecutor, "CONNECT_SECONDS", 2.0)
    with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9 .*dask scheduler"):
        DaskExecutor("tcp://127.0.0.1:9", connect_timeout=2)
    rc = cli.main(["distill", "--preset", "cpu-smoke", "--cluster", "tcp://127.0.0.1:9"])
    assert rc == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9 (from --cluster): connecting failed " \
                       "(Connection refused)" in capsys.readouterr().err
    with pytest.raises(ClusterError, match="local:N needs N >= 1"):
        DaskExecutor("local:none")


@pytest.fixture
def silent_server():
    """A loopback server that accepts every connection and never writes a byte (nor closes one)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for connection in accepted:
        connection.close()


def test_a_scheduler_that_accepts_and_never_answers_cannot_hang_the_cli(silent_server, tmp_path):
    address, accepted = silent_server
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "seqmatch_engine", "--home", str(tmp_path), "distill", "--preset",
                           "cpu-smoke", "--cluster", address], cwd=paths.REPO_DIR, capture_output=True, text=True,
                          timeout=DaskExecutor.CONNECT_SECONDS + 90, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.time() - started
    assert proc.returncode == 2, proc.stderr
    assert accepted, "the CLI never connected"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: the server at {address} (from --cluster) accepted the connection but sent no Dask handshake within "
        f"10 s (or closed it): it is not a Dask scheduler (a dashboard or web server waits silently), or it is stuck. "
        f"Check the address (--cluster), that a scheduler runs there (`dask scheduler`, then `dask worker {address}` "
        f"on each machine) and that its port is open from here (`nc -vz 127.0.0.1 {address.rsplit(':', 1)[1]}`); or "
        f"drop --cluster to run on this machine")
    assert DaskExecutor.CONNECT_SECONDS <= elapsed < DaskExecutor.CONNECT_SECONDS + 60
    assert not (tmp_path / "runs").exists() and not (tmp_path / "studies").exists()


@pytest.mark.parametrize("value, message", [
    ("http://127.0.0.1:8786", "--cluster 'http://127.0.0.1:8786': use local:N"),
    ("local:0", "--cluster 'local:0': local:N needs N >= 1 worker processes, e.g. local:2; or drop --cluster"),
    ("local:-1", "--cluster 'local:-1': local:N needs N >= 1"),
    ("local:abc", "--cluster 'local:abc': local:N needs N >= 1"),
    ("../../etc", "--cluster '../../etc': use local:N (N worker processes on this machine) or tcp://HOST:PORT"),
    ("tcp://127.0.0.1:99999", "--cluster 'tcp://127.0.0.1:99999': use local:N"),
])
def test_every_bad_cluster_value_is_refused_before_anything_is_written(value, message, tmp_path, capsys):
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps(study_spec().to_dict()))
    for command in (["distill", "--preset", "cpu-smoke"], ["study", str(spec)], ["experts", "--preset", "cpu-smoke"]):
        assert cli.main(["--home", str(tmp_path / "home"), *command, "--cluster", value]) == 2
        assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "home").exists(), "a failed start left files behind"


def test_a_bad_cluster_from_the_environment_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEQMATCH_CLUSTER", "garbage")
    assert cli.main(["--home", str(tmp_path), "distill", "--preset", "cpu-smoke"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: $SEQMATCH_CLUSTER 'garbage': use local:N (N worker processes on this machine) or tcp://HOST:PORT of "
        "a running Dask scheduler (e.g. tcp://10.0.0.5:8786); or unset SEQMATCH_CLUSTER to run on this machine")
    assert not (tmp_path / "runs").exists()


def test_a_missing_distributed_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with pytest.raises(ClusterError, match="not installed: pip install -r requirements-cluster.txt"):
        DaskExecutor("local:2")


def test_the_engine_imports_no_ui_library_and_no_dask():
    code = ("import sys, seqmatch_engine, seqmatch_engine.interfaces.cli, seqmatch_engine.interfaces.manager, "
            "seqmatch_engine.orchestration.study, "
            "seqmatch_engine.diagnostics, seqmatch_engine.orchestration.executors, seqmatch_engine.interfaces.bench\n"
            "print(sorted(m for m in ('gradio', 'plotly', 'distributed', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO_DIR, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_stopped_local_map_starts_nothing():
    control, started = RunControl(), []
    control.stop()
    with pytest.raises(StopRequested):
        next(LocalExecutor(1).map(lambda job, on_epoch: started.append(job), [0], control=control))
    assert started == []


# -- a study's runs as cluster jobs -------------------------------------------------------------------------
def study_spec():
    from seqmatch_engine.core.study_spec import StudySpec

    base = tiny_run_config("base", 0, (1, 1), diagnose_every=2, select_points=2).to_dict()
    base["eval"]["num_nets"] = 2
    return StudySpec.from_dict({"name": "spread", "config": base, "grid": [{"ipc": 2, "subsets": 2}],
                                "seeds": [0, 1], "lr_img": [10.0, 40.0], "tune_seeds": [0]})


def study_files(home) -> dict:
    """The study's summary and every run's eval.json and subsets, byte for byte."""
    root = paths.studies_root(home) / "spread"
    names = ["summary.json", "summary.md", "experts.json", *(str(p.relative_to(root)) for pattern in
             ("runs/*/eval.json", "runs/*/controls.json", "runs/*/subsets/*") for p in sorted(root.glob(pattern)))]
    return {name: (root / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    from seqmatch_engine.orchestration.study import run_study
    from seqmatch_engine.storage.study_folder import StudyFolder

    home = tmp_path_factory.mktemp("local-study")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # distil on two threads, as a study does: the workers must match it
    try:
        run_study(StudyFolder.create_or_open(paths.studies_root(home), study_spec()), paths.experts_root(home))
    finally:
        torch.set_num_threads(threads)
    return study_files(home)


def test_a_study_on_a_local_cluster_equals_the_local_study(local_study, tmp_path, capsys):
    spec_file = tmp_path / "spread.json"
    spec_file.write_text(json.dumps(study_spec().to_dict()))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rc = cli.main(["--home", str(tmp_path), "study", str(spec_file), "--cluster", "local:2"])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "== run 1/6" in err and "jobs run on: dask" in err
    ours = study_files(tmp_path)
    assert ours.keys() == local_study.keys() and len(ours) > 10
    for name in ours:
        assert ours[name] == local_study[name], name


def test_a_worker_killed_while_a_study_run_distils_changes_nothing(cluster, local_study, tmp_path):
    from seqmatch_engine.orchestration.study import run_study
    from seqmatch_engine.storage.study_folder import StudyFolder

    killed = []

    def kill_a_worker_once(run_id, index, total):
        if index != 1 or killed:
            return
        deadline = time.time() + 30  # the first run is out: kill the worker that distils it
        while time.time() < deadline:
            busy = [worker for worker, keys in cluster.processing().items()
                    if any(str(key).startswith("study-run-") for key in keys)]
            if busy:
                time.sleep(0.5)
                victim = cluster.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.1)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_study(StudyFolder.create_or_open(paths.studies_root(tmp_path), study_spec()), paths.experts_root(tmp_path),
                  on_run=kill_a_worker_once, executor=DaskExecutor.from_client(cluster))
    finally:
        torch.set_num_threads(threads)
    assert killed
    assert study_files(tmp_path) == local_study
    messages = [m.text for run in (paths.studies_root(tmp_path) / "spread" / "runs").iterdir()
                for m in RunFolder(run).status().messages]
    assert any(text.startswith("the Dask worker tcp://127.0.0.1:") and "was lost while this run was on the cluster"
               in text for text in messages), messages
    cluster.wait_for_workers(2, timeout=60)
