"""Command line: python -m seqmatch_engine presets|experts|distill|evaluate|export|runs|diagnose|study|bench ..."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from . import paths
from .config import (
    BUDGET_NOTES,
    BUDGETS,
    DEFAULT_PRESET,
    ConfigError,
    RunConfig,
    apply_overrides,
    as_static,
    load_config_file,
    load_preset,
    preset_names,
)
from .context import RunContext
from .data import DatasetError
from .executors import CLUSTER_ENV, ClusterError, Executor, make_executor
from .records import RunState
from .runs import RunError, RunFolder, list_runs
from .seeding import resolve_device
from .seqmatch import Distiller, Event, EventKind, StopRequested, evaluate_run
from .storage import StorageError


class ProgressBars:
    """An observer drawing one tqdm bar per phase on stderr."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.key: tuple | None = None

    def _bar(self, key: tuple, total: int, description: str) -> tqdm:
        if self.key != key:
            self.close()
            self.bar = tqdm(total=total, desc=description, unit="it", dynamic_ncols=True, file=sys.stderr)
            self.key = key
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None

    def __call__(self, event: Event) -> None:
        if event.kind == EventKind.PHASE:
            self.close()
            tqdm.write(f"[{event.data['name']}]" + (f" {event.data['message']}" if "message" in event.data else ""),
                       file=sys.stderr)
        elif event.kind == EventKind.PROGRESS:
            task = event.data["task"]
            bar = self._bar((task, event.stage), event.data["total"],
                            f"experts S{event.stage + 1}" if task == "experts" else task)
            bar.n = event.data["done"]
            bar.refresh()
        elif event.kind == EventKind.ITERATION:
            bar = self._bar(("distil", event.stage), event.data["total"], f"distilling S{event.stage + 1}")
            bar.n = event.iteration
            bar.set_postfix(loss=f"{event.data['loss']:.4f}", lr=f"{event.data['lr']:.4g}",
                            t=event.data["start_epoch"], refresh=True)
        elif event.kind == EventKind.SELECTION:
            tqdm.write(f"  S{event.stage + 1} it {event.iteration}: val acc {100 * event.data['val_accuracy']:.2f} % "
                       f"(best {100 * event.data['best_accuracy']:.2f} % at it {event.data['best_iteration']})",
                       file=sys.stderr)
        elif event.kind in (EventKind.DONE, EventKind.ERROR):
            self.close()


def config_from_args(args: argparse.Namespace) -> RunConfig:
    raw = load_config_file(args.config) if args.config else load_preset(args.preset)
    config = RunConfig.from_dict(apply_overrides(raw, args.set or []))
    return as_static(config, args.budget) if getattr(args, "static", False) else config


def format_accuracy(result: dict) -> str:
    budget = f"  budget {result['budget']}" if result.get("budget") else ""
    lines = [f"method {result['method']}  IPC {result['ipc']}{budget}  "
             f"learned lrs {', '.join(f'{x:.4g}' for x in result['lrs'])}"]
    for name in ("synthetic", "random_real"):
        for arch, acc in result.get(name, {}).items():
            lines.append(f"{name:12s} {arch:9s} {100 * acc['mean']:6.2f} ± {100 * acc['std']:.2f} %  "
                         f"({len(acc['values'])} nets)")
    if result.get("diverged"):
        lines.append(f"warning: {', '.join(f'S{k + 1}' for k in result['diverged'])} diverged and kept earlier, sane "
                     f"images; this accuracy is not the method's (see the messages above)")
    return "\n".join(lines)


def executor_from_args(args: argparse.Namespace, config: RunConfig) -> Executor:
    """The executor --cluster (or $SEQMATCH_CLUSTER) names, else local; printed so that users see where jobs run."""
    executor = make_executor(getattr(args, "cluster", None), resolve_device(config.device))
    print(f"jobs run on: {executor.describe()}", file=sys.stderr)
    return executor


def cmd_experts(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    executor = executor_from_args(args, config)
    try:
        ctx = RunContext(config, paths.experts_root(args.home), executor=executor)
        recipe, count = ctx.stage1_recipe(), config.experts.num_experts
        note = ctx.cache.retrain_note(recipe, count)
        if note:
            print(f"note: {note}", file=sys.stderr)
        bars = ProgressBars()
        experts = ctx.stage1_experts(lambda done, total: bars(Event(EventKind.PROGRESS, 0, data={
            "task": "experts", "done": done, "total": total})))
        bars.close()
    finally:
        executor.close()
    shipped = ctx.cache.shipped_set(recipe)
    served = min(shipped.count, count) if shipped else 0
    print(f"{len(experts)} stage-1 experts x {experts.shape[1] - 1} epochs cached under {paths.experts_root(args.home)}"
          + (f" ({served} of them shipped with the app: {shipped.path})" if served else ""))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    if args.resume:
        if args.set or args.config or args.static:
            raise ConfigError("--resume continues a run with the config saved in its folder; "
                              "drop --set, --config and --static (start a new run to change settings)")
        run = RunFolder.from_argument(paths.runs_root(args.home), args.resume)
        if run.status().get("state") == RunState.DONE:
            raise RunError(f"run {run.id} is finished; nothing to resume (its results are kept). To evaluate it "
                           f"again: python -m seqmatch_engine evaluate {run.path}")
    else:
        config = config_from_args(args)
        resolve_device(config.device)  # fail before creating a run folder
        run = RunFolder.create(paths.runs_root(args.home), config)
    print(f"run folder: {run.path}", file=sys.stderr)
    budget = run.config().budget
    if budget:
        print(f"budget convention: {budget} ({BUDGET_NOTES[budget]})", file=sys.stderr)
    executor = executor_from_args(args, run.config())
    try:
        result = Distiller(run, paths.experts_root(args.home), ProgressBars(), executor=executor).run()
    except DatasetError:
        if not args.resume:
            run.delete()  # nothing was done: leave no run folder behind
        raise
    finally:
        executor.close()
    for message in run.status().get("messages", []):
        print(f"{message['level']}: {message['text']}", file=sys.stderr)
    if result is None:
        print(f"stopped; resume with: python -m seqmatch_engine distill --resume {run.path}")
        return 1
    print(format_accuracy(result))
    seconds = run.status().get("phase_seconds", {})
    print("wall time: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()), file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    config = run.config()
    subsets = run.subsets()
    if len(subsets) < len(config.distill.subsets):
        raise RunError(f"run {run.id} has {len(subsets)} of {len(config.distill.subsets)} subsets; "
                       f"finish it first: python -m seqmatch_engine distill --resume {run.path}")
    changes = {k: v for k, v in (("num_nets", args.nets), ("epochs", args.epochs),
                                 ("architectures", args.arch)) if v is not None}
    config = RunConfig.from_dict({**config.to_dict(), "eval": {**config.to_dict()["eval"], **changes}})
    executor = executor_from_args(args, config)
    try:
        bars = ProgressBars()
        ctx = RunContext(config, paths.experts_root(args.home), executor=executor)
        result = evaluate_run(ctx, run, subsets, lambda kind, stage=None, iteration=None, **data: bars(
            Event(kind, stage, iteration, data)))
        bars.close()
    finally:
        executor.close()
    print(format_accuracy(result))
    if ctx.evaluations_read:
        print(f"({ctx.evaluations_read} evaluation nets were read from {ctx.evaluations.root}, trained before with "
              f"the same sets, seeds and settings; delete that folder to train them again)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    folder = run.export(Path(args.out) if args.out else None)
    print(f"exported to {folder}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    for run in list_runs(paths.runs_root(args.home)):
        row = run.overview()
        state = RunState.on_disk({"state": row.state})
        acc = "" if row.accuracy is None else f"{100 * row.accuracy['mean']:.2f} %"
        print(f"{row.id:45s} {state:11s} {row.phase:18s} {acc}" + (f"  ({row.problem})" if row.problem else ""))
    return 0


class TaskBar:
    """A progress callback (done, total) drawing one tqdm bar on stderr, opened on first use."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, dynamic_ncols=True, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> "TaskBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnostics import COMPUTED, DiagnosticsOptions, RunDiagnostics, format_summary, missing, summary
    from .diagnostics.store import read_g1

    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    only = args.only or ["g1", *COMPUTED]
    wanted = [name for name in COMPUTED if name in only]
    todo = wanted if args.force else [name for name in wanted if name in missing(run.path, args.reducer)]
    if "g1" in only and not read_g1(run.path):
        print("G1: no records; it is recorded while distilling when distill.diagnose_every > 0", file=sys.stderr)
    if todo:
        options = DiagnosticsOptions(experts=args.experts, draws=args.draws, nets=args.nets, reducer=args.reducer)
        diagnostics = RunDiagnostics(run, paths.experts_root(args.home), options)
        with TaskBar("held-out experts") as bar:
            diagnostics.held_out_experts(bar)
        descriptions = {"g2": "G2 matching error", "g3": f"G3 features ({args.reducer})", "g4": "G4 easy/hard"}
        partner = RunFolder.from_argument(paths.runs_root(args.home), args.partner) if args.partner else None
        for name in todo:
            with TaskBar(descriptions[name]) as bar:
                diagnostics.compute(name, bar, partner)
    reused = [name for name in wanted if name not in todo]
    print(f"run {run.id}: computed {', '.join(todo) or 'nothing'}"
          + (f"; already there: {', '.join(reused)} (--force recomputes)" if reused else ""))
    print(format_summary(summary(run.path)))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import run_study
    from .study_folder import StudyFolder
    from .study_spec import load_study_spec, study_preset_names
    from .study_summary import format_table, summarise

    if (args.spec is None) == (args.preset is None):
        raise ConfigError(f"study: give a spec file or --preset NAME (one of: {', '.join(study_preset_names())})")
    spec = load_study_spec(args.preset or args.spec)
    study = StudyFolder.create_or_open(paths.studies_root(args.home), spec)
    print(f"study folder: {study.path}  (budget convention: {spec.budget}: {BUDGET_NOTES[spec.budget]})",
          file=sys.stderr)
    if args.summary:
        summary = summarise(study)
        study.save_summary(summary, format_table(summary))
        print(format_table(summary))
        return 0
    bars = ProgressBars()

    def on_run(run_id: str, index: int, total: int) -> None:
        bars.close()
        tqdm.write(f"== run {index + 1}/{total}: {run_id}", file=sys.stderr)

    executor = executor_from_args(args, spec.run_config(spec.grid[0], spec.seeds[0], spec.methods[0]))
    try:
        summary = run_study(study, paths.experts_root(args.home), bars, on_run=on_run, executor=executor)
    except StopRequested:
        print(f"stopped; resume with the same command (finished runs are kept): {study.path}", file=sys.stderr)
        return 1
    finally:
        executor.close()
    print(format_table(summary))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(name)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(quick=args.quick, threads=args.threads, sections=args.only)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .bench import SECTIONS

    parser = argparse.ArgumentParser(prog="python -m seqmatch_engine", description=__doc__)
    parser.add_argument("--home", type=Path, default=None,
                        help="folder holding runs/ and experts/ (default: $SEQMATCH_HOME or the current folder)")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of: {', '.join(preset_names())}")
        sub.add_argument("--config", help="a JSON config file (instead of a preset)")
        sub.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a setting, e.g. --set distill.syn_steps=20 (repeatable)")

    def with_cluster(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--cluster", metavar="ADDRESS",
                         help="run experts and evaluation nets on Dask: local:N (N worker processes here) or "
                              f"tcp://HOST:8786 (a running scheduler); default ${CLUSTER_ENV}, else this process")

    sub = commands.add_parser("experts", help="train and cache the stage-1 expert trajectories")
    with_config(sub)
    with_cluster(sub)
    sub.set_defaults(func=cmd_experts)
    sub = commands.add_parser("distill", help="distil a set (SeqMatch, or static MTT with --static) and evaluate it")
    with_config(sub)
    sub.add_argument("--static", action="store_true", help="static MTT: one subset with the same total IPC")
    sub.add_argument("--budget", choices=BUDGETS, default="per-image",
                     help="with --static: per-image (the authors' convention, default): as many iterations as each "
                          "subset; total: the sum of the subsets' iterations")
    sub.add_argument("--resume", metavar="RUN", help="continue a stopped or killed run folder")
    with_cluster(sub)
    sub.set_defaults(func=cmd_distill)
    sub = commands.add_parser("evaluate", help="re-evaluate a finished run")
    sub.add_argument("run")
    sub.add_argument("--nets", type=int)
    sub.add_argument("--epochs", type=int)
    sub.add_argument("--arch", nargs="+", help="convnet resnet18 vgg11 alexnet")
    with_cluster(sub)
    sub.set_defaults(func=cmd_evaluate)
    sub = commands.add_parser("export", help="write a run's set as safetensors + PNG grids")
    sub.add_argument("run")
    sub.add_argument("--out")
    sub.set_defaults(func=cmd_export)
    commands.add_parser("runs", help="list runs").set_defaults(func=cmd_runs)
    commands.add_parser("presets", help="list presets").set_defaults(func=cmd_presets)
    sub = commands.add_parser("diagnose", help="coupling diagnostics G1-G4 of a finished run (computes what lacks)")
    sub.add_argument("run")
    sub.add_argument("--only", nargs="+", choices=["g1", "g2", "g3", "g4"], help="diagnostics to show/compute")
    sub.add_argument("--reducer", choices=["umap", "pca"], default="umap", help="G3 embedding (pca: instant)")
    sub.add_argument("--experts", type=int, default=3, help="held-out experts for G2-G4")
    sub.add_argument("--draws", type=int, default=2, help="G2 unroll plans per held-out expert and start epoch")
    sub.add_argument("--nets", type=int, default=2, help="G4 nets per set")
    sub.add_argument("--force", action="store_true", help="recompute G2-G4 even when the run has them")
    sub.add_argument("--partner", metavar="RUN",
                     help="for a static MTT run: the SeqMatch run (same seed) whose retrained-expert families G2 "
                          "also scores it on")
    sub.set_defaults(func=cmd_diagnose)
    sub = commands.add_parser("study", help="a grid of runs (method x IPC x seed), paired by seed, resumable, summarised")
    sub.add_argument("spec", nargs="?", help="a study spec JSON file (see assets/studies/)")
    sub.add_argument("--preset", help="a study preset from assets/studies/ instead of a file")
    sub.add_argument("--summary", action="store_true", help="only rebuild and print the summary of what has run")
    with_cluster(sub)
    sub.set_defaults(func=cmd_study)
    sub = commands.add_parser("bench", help="speed and memory of the engine vs plain references (prints a report)")
    sub.add_argument("--quick", action="store_true", help="one round per measurement, 1 expert for the first-image test")
    sub.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    sub.add_argument("--only", nargs="+", choices=SECTIONS,
                     help="run only these sections")
    sub.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, RunError, StorageError, ValueError, ClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with `distill --resume RUN`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
