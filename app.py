"""SeqMatch Studio: python app.py [--host 127.0.0.1] [--port 7860] [--home DIR]"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.orchestration.executors import ClusterError, make_executor
from seqmatch_engine.storage.ownership import name_this_process
from views.layout import build_app, launch_options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Launch the SeqMatch Studio web app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--home", type=Path, default=None,
                        help="folder holding runs/ and experts/ (default: $SEQMATCH_HOME or the current folder)")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="run experts and evaluation nets on Dask: local:N or tcp://HOST:8786 "
                             "(default: $SEQMATCH_CLUSTER, else this process)")
    args = parser.parse_args(argv)
    name_this_process(f"the app (app.py) on port {args.port}")
    try:
        executor = make_executor(args.cluster, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    except ClusterError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"jobs run on: {executor.describe()}", flush=True)
    manager = JobManager(args.home, executor)
    demo = build_app(manager)
    demo.queue(default_concurrency_limit=4)
    try:
        demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **launch_options())
    except OSError as error:
        raise SystemExit(f"error: cannot serve on {args.host}:{args.port} ({error}): the port is in use or the "
                         f"address is not this machine's; pass another --port, or stop the other server") from None
    print(f"SeqMatch Studio on http://{args.host}:{args.port}  (runs in {manager.runs_root})", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
