"""Command line: python -m seqmatch_engine presets|experts|distill|evaluate|export|runs|diagnose|study|bench ..."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from seqmatch_engine.core import paths
from seqmatch_engine.core.config import (
    BUDGET_NOTES,
    BUDGETS,
    DEFAULT_PRESET,
    MAX_NETS,
    ConfigError,
    EvalConfig,
    RunConfig,
    apply_overrides,
    as_static,
    load_config_file,
    load_preset,
    preset_names,
)
from seqmatch_engine.core.control import format_seconds
from seqmatch_engine.core.seeding import resolve_device
from seqmatch_engine.core.study_spec import load_study_spec, study_preset_names
from seqmatch_engine.data.datasets import DatasetError
from seqmatch_engine.interfaces.bench import SECTIONS, run_bench
from seqmatch_engine.interfaces.cli_progress import ProgressBars, TaskBar
from seqmatch_engine.orchestration.context import RunContext
from seqmatch_engine.orchestration.driver import Distiller, Event, EventKind, StopRequested, evaluate_run
from seqmatch_engine.orchestration.executors import CLUSTER_ENV, ClusterError, Executor, make_executor
from seqmatch_engine.orchestration.run_diagnostics import (
    DIAGNOSTICS,
    DiagnosticsOptions,
    RunDiagnostics,
    compute,
    computed,
    format_summary,
    missing,
    summary,
)
from seqmatch_engine.orchestration.study import run_study
from seqmatch_engine.orchestration.study_eta import study_eta
from seqmatch_engine.orchestration.study_summary import format_table, summarise
from seqmatch_engine.storage.export import export_set
from seqmatch_engine.storage.files import StorageError
from seqmatch_engine.storage.ownership import Owned, Owner, OwnerLock, name_this_process
from seqmatch_engine.storage.records import EvalResult, RunState
from seqmatch_engine.storage.runs import RunError, RunFolder, list_runs
from seqmatch_engine.storage.study_folder import StudyFolder


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


def owning(lock: OwnerLock, wait: bool):
    """Hold `lock` (a run's or a study's); with `wait`, say once whom this command waits for."""
    told: list[str] = []

    def on_wait(owner: Owner | None) -> None:
        who = owner.describe() if owner else "another process"
        if who not in told:
            told.append(who)
            print(f"waiting: {lock.what} is in use by {who}; this command goes on when it is free (Ctrl-C gives up)",
                  file=sys.stderr)

    return lock.hold(wait=wait, on_wait=on_wait)


def cmd_distill(args: argparse.Namespace) -> int:
    if not args.resume:
        if args.wait:
            raise ConfigError("--wait waits for another process to free a run; use it with --resume RUN")
        config = config_from_args(args)
        executor = executor_from_args(args, config)  # the cluster is reached before any run folder exists
        try:
            run = RunFolder.create(paths.runs_root(args.home), config)
        except BaseException:
            executor.close()
            raise
        return _distil(args, run, executor)
    if args.set or args.config or args.static:
        raise ConfigError("--resume continues a run with the config saved in its folder; "
                          "drop --set, --config and --static (start a new run to change settings)")
    run = RunFolder.from_argument(paths.runs_root(args.home), args.resume)
    with owning(run.lock(), args.wait):  # a second process refuses here, before it builds anything
        if run.status().state == RunState.DONE:
            raise RunError(f"run {run.id} is finished; nothing to resume (its results are kept). To evaluate it "
                           f"again: python -m seqmatch_engine evaluate {run.path}")
        return _distil(args, run, executor_from_args(args, run.config()))


def _distil(args: argparse.Namespace, run: RunFolder, executor: Executor) -> int:
    print(f"run folder: {run.path}", file=sys.stderr)
    budget = run.config().budget
    if budget:
        print(f"budget convention: {budget} ({BUDGET_NOTES[budget]})", file=sys.stderr)
    try:
        result = Distiller(run, paths.experts_root(args.home), ProgressBars(), executor=executor).run()
    except DatasetError:
        if not args.resume:
            run.delete()  # nothing was done: leave no run folder behind
        raise
    finally:
        executor.close()
    for message in run.status().messages:
        print(f"{message.level}: {message.text}", file=sys.stderr)
    if result is None:
        print(f"stopped; resume with: python -m seqmatch_engine distill --resume {run.path}")
        return 1
    print(format_accuracy(result))
    seconds = run.status().phase_seconds
    print("wall time: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()), file=sys.stderr)
    return 0


def evaluation_name(own: EvalConfig, used: EvalConfig) -> str | None:
    """The name of an evaluation with settings `used` beside the run's own (`own`): what differs, e.g. "epochs2" or
    "epochs2-nets3"; None when nothing does (it is the run's own evaluation, eval.json)."""
    parts = [f"epochs{used.epochs}" if used.epochs != own.epochs else "",
             f"nets{used.num_nets}" if used.num_nets != own.num_nets else "",
             "arch-" + "-".join(used.architectures) if used.architectures != own.architectures else ""]
    return "-".join(p for p in parts if p) or None


def _accuracy_text(result: EvalResult | None) -> str:
    accuracy = result.accuracy() if result else None
    return f"{100 * accuracy['mean']:.2f} %" if accuracy else "not evaluated"


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    with owning(run.lock(), wait=False):
        own = run.config()
        subsets = run.subsets()
        if len(subsets) < len(own.distill.subsets):
            raise RunError(f"run {run.id} has {len(subsets)} of {len(own.distill.subsets)} subsets; "
                           f"finish it first: python -m seqmatch_engine distill --resume {run.path}")
        changes = {k: v for k, v in (("num_nets", args.nets), ("epochs", args.epochs),
                                     ("architectures", args.arch)) if v is not None}
        config = RunConfig.from_dict({**own.to_dict(), "eval": {**own.to_dict()["eval"], **changes}})
        name = evaluation_name(own.eval, config.eval)
        executor = executor_from_args(args, config)
        try:
            bars = ProgressBars()
            ctx = RunContext(config, paths.experts_root(args.home), executor=executor)
            result = evaluate_run(ctx, run, subsets, lambda kind, stage=None, iteration=None, **data: bars(
                Event(kind, stage, iteration, data)), name=name)
            bars.close()
        finally:
            executor.close()
    print(format_accuracy(result))
    if name:
        print(f"evaluation {name!r} (settings other than the run's own) written to {run.evaluation_file(name)}; the "
              f"run's own evaluation, {paths.EVAL_FILE} ({_accuracy_text(run.eval())}), is unchanged and is what "
              f"lists and studies show")
    others = "".join(f"; {other}: {_accuracy_text(result)}" for other, result in run.evaluations().items())
    print(f"evaluations of run {run.id}: its own ({paths.EVAL_FILE}): {_accuracy_text(run.eval())}{others}")
    if ctx.evaluations_read:
        print(f"({ctx.evaluations_read} evaluation nets were read from {ctx.evaluations.root}, trained before with "
              f"the same sets, seeds and settings; delete that folder to train them again)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    print(export_set(run, Path(args.out) if args.out else None, partial=args.partial).describe())
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    for run in list_runs(paths.runs_root(args.home)):
        row = run.overview()
        owner = run.lock().owner()
        state = "running" if owner else RunState.on_disk(row.state)
        acc = "" if row.accuracy is None else f"{100 * row.accuracy['mean']:.2f} %"
        notes = ([row.problem] if row.problem else []) + ([f"in {owner.describe()}"] if owner else [])
        others = [f"{name} {_accuracy_text(result)}" for name, result in run.evaluations().items()] if not row.problem \
            else []
        notes += [f"other evaluations: {', '.join(others)}"] if others else []
        print(f"{row.id:45s} {state:11s} {row.phase:18s} {acc}" + (f"  ({'; '.join(notes)})" if notes else ""))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    run = RunFolder.from_argument(paths.runs_root(args.home), args.run)
    only = args.only or list(DIAGNOSTICS)
    wanted = [name for name in computed() if name in only]
    lacking = missing(run.path, args.reducer, partner=bool(args.partner))
    todo = wanted if args.force else [name for name in wanted if name in lacking]
    if "g1" in only and DIAGNOSTICS["g1"].lacks(run.path, None, False):
        print("G1: no records; it is recorded while distilling when distill.diagnose_every > 0", file=sys.stderr)
    if todo:
        options = DiagnosticsOptions(experts=args.experts, draws=args.draws, nets=args.nets, reducer=args.reducer)
        diagnostics = RunDiagnostics(run, paths.experts_root(args.home), options)
        with TaskBar("held-out experts") as bar:
            diagnostics.held_out_experts(bar)
        partner = RunFolder.from_argument(paths.runs_root(args.home), args.partner) if args.partner else None
        for name in todo:
            with TaskBar(DIAGNOSTICS[name].title) as bar:
                compute(diagnostics, name, bar, partner)
    reused = [name for name in wanted if name not in todo]
    print(f"run {run.id}: computed {', '.join(todo) or 'nothing'}"
          + (f"; already there: {', '.join(reused)} (--force recomputes)" if reused else ""))
    print(format_summary(summary(run.path)))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    if (args.spec is None) == (args.preset is None):
        raise ConfigError(f"study: give a spec file or --preset NAME (one of: {', '.join(study_preset_names())})")
    spec = load_study_spec(args.preset or args.spec)
    root = paths.studies_root(args.home)
    if args.summary:
        study = StudyFolder.existing(root, spec)
        if study is None:
            raise RunError(f"study {spec.name!r} has not run yet (no folder in {root.resolve()}); run it first "
                           f"(the same command without --summary)")
        print(f"study folder: {study.path}  (budget convention: {spec.budget}: {BUDGET_NOTES[spec.budget]})",
              file=sys.stderr)
        summary = summarise(study)
        study.save_summary(summary, format_table(summary))
        print(format_table(summary))
        return 0
    if args.archive is not None:
        study = StudyFolder.existing(root, spec)
        if study is None:
            raise RunError(f"study {spec.name!r} has not run in this home (no folder in {root.resolve()}): nothing "
                           f"to archive")
        target = Path(args.archive) if args.archive else paths.study_archive(spec.name)
        archived = study.archive(target)
        print(f"archived {len(archived)} finished runs of study {spec.name!r} in {target.resolve()} (all but their "
              f"checkpoints, snapshots and exports); another home goes on from them with: study ... --restore "
              f"{target}", file=sys.stderr)
        return 0
    reuse = [StudyFolder.find(root, study_id) for study_id in args.reuse]
    if spec.name in {source.id for source in reuse}:
        raise ConfigError(f"study --reuse {spec.name}: a study cannot reuse its own runs; name other studies")
    bars = ProgressBars()

    def on_run(run_id: str, index: int, total: int) -> None:
        bars.close()
        origin = study.run(run_id).origin()
        eta = None if origin else study_eta(study)
        tqdm.write(f"== run {index + 1}/{total}: {run_id}" + (f" (copied from {origin})" if origin else "")
                   + (f" (the study: about {format_seconds(eta.seconds)} left)" if eta else ""), file=sys.stderr)

    with contextlib.ExitStack() as stack:
        study = StudyFolder.existing(root, spec)
        if study is not None:  # a second process refuses (or waits) here, before it builds anything
            stack.enter_context(owning(study.lock(), args.wait))
        executor = executor_from_args(args, spec.run_config(spec.grid[0], spec.seeds[0], spec.methods[0]))
        stack.callback(executor.close)
        if study is None:  # only once the cluster answered
            study = StudyFolder.create_or_open(root, spec)
            stack.enter_context(owning(study.lock(), args.wait))
        if args.restore is not None:
            archive = StudyFolder(Path(args.restore) if args.restore else paths.study_archive(spec.name))
            restored, left_out = study.restore_from(archive)
            print(f"restored {len(restored)} finished runs from {archive.path.resolve()}" +
                  (f"; left out: {', '.join(left_out)}" if left_out else ""), file=sys.stderr)
        print(f"study folder: {study.path}  (budget convention: {spec.budget}: {BUDGET_NOTES[spec.budget]})",
              file=sys.stderr)
        try:
            summary = run_study(study, paths.experts_root(args.home), bars, on_run=on_run, executor=executor,
                                reuse=reuse)
        except StopRequested:
            print(f"stopped; resume with the same command (finished runs are kept): {study.path}", file=sys.stderr)
            return 1
    print(format_table(summary))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(name)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    run_bench(quick=args.quick, threads=args.threads, sections=args.only)
    return 0


def whole_number(low: int, high: int):
    """An argparse type: a whole number from `low` to `high` (argparse names the option in its message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
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
    sub.add_argument("--wait", action="store_true",
                     help="with --resume: when another process trains the run, wait until it is free instead of "
                          "refusing")
    with_cluster(sub)
    sub.set_defaults(func=cmd_distill)
    sub = commands.add_parser("evaluate", help="re-evaluate a finished run")
    sub.add_argument("run")
    sub.add_argument("--nets", type=whole_number(1, MAX_NETS), help=f"evaluation nets per set (1-{MAX_NETS})")
    sub.add_argument("--epochs", type=whole_number(1, 100_000), help="training epochs per curriculum stage")
    sub.add_argument("--arch", nargs="+", help="convnet resnet18 vgg11 alexnet")
    with_cluster(sub)
    sub.set_defaults(func=cmd_evaluate)
    sub = commands.add_parser("export", help="write a run's set as safetensors + PNG grids")
    sub.add_argument("run")
    sub.add_argument("--out")
    sub.add_argument("--partial", action="store_true",
                     help="export the subsets a running, stopped or interrupted run has learned so far (marked as "
                          "partial in the file's metadata)")
    sub.set_defaults(func=cmd_export)
    commands.add_parser("runs", help="list runs").set_defaults(func=cmd_runs)
    commands.add_parser("presets", help="list presets").set_defaults(func=cmd_presets)
    sub = commands.add_parser("diagnose", help="coupling diagnostics G1-G4 of a finished run (computes what lacks)")
    sub.add_argument("run")
    sub.add_argument("--only", nargs="+", choices=list(DIAGNOSTICS), help="diagnostics to show/compute")
    sub.add_argument("--reducer", choices=["umap", "pca"], default="umap", help="G3 embedding (pca: instant)")
    sub.add_argument("--experts", type=whole_number(1, 100), default=3, help="held-out experts for G2-G4")
    sub.add_argument("--draws", type=whole_number(1, 100), default=2,
                     help="G2 unroll plans per held-out expert and start epoch")
    sub.add_argument("--nets", type=whole_number(1, MAX_NETS), default=2, help="G4 nets per set")
    sub.add_argument("--force", action="store_true", help="recompute G2-G4 even when the run has them")
    sub.add_argument("--partner", metavar="RUN",
                     help="for a static MTT run: the SeqMatch run (same seed) whose retrained-expert families G2 "
                          "also scores it on")
    sub.set_defaults(func=cmd_diagnose)
    sub = commands.add_parser("study", help="a grid of runs (method x IPC x seed), paired by seed, resumable, summarised")
    sub.add_argument("spec", nargs="?", help="a study spec JSON file (see assets/studies/)")
    sub.add_argument("--preset", help="a study preset from assets/studies/ instead of a file")
    sub.add_argument("--summary", action="store_true", help="only rebuild and print the summary of what has run")
    sub.add_argument("--wait", action="store_true",
                     help="when another process runs the study, wait until it is free instead of refusing")
    sub.add_argument("--reuse", nargs="+", metavar="STUDY", default=[],
                     help="copy finished runs of these studies (ids in this home) where one is the same run as the "
                          "plan's (equal config but for its name) instead of running it again")
    sub.add_argument("--archive", nargs="?", const="", metavar="DIR",
                     help="only write the finished runs of the study in this home (all but checkpoints, snapshots "
                          "and exports) to DIR (default: assets/learn/studies/NAME/archive, kept in the repository) "
                          "so that another machine goes on from them with --restore")
    sub.add_argument("--restore", nargs="?", const="", metavar="DIR",
                     help="first copy in the finished runs of the archive in DIR (default: the one --archive writes) "
                          "that this home's study lacks, then go on with the study")
    with_cluster(sub)
    sub.set_defaults(func=cmd_study)
    sub = commands.add_parser("bench", help="speed and memory of the engine vs plain references (prints a report)")
    sub.add_argument("--quick", action="store_true", help="one round per measurement, 1 expert for the first-image test")
    sub.add_argument("--threads", type=whole_number(1, 1024), help="torch threads (default: torch's choice)")
    sub.add_argument("--only", nargs="+", choices=SECTIONS,
                     help="run only these sections")
    sub.set_defaults(func=cmd_bench)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping the command as Ctrl-C does (every `except KeyboardInterrupt` records its state as
    stopped). A subclass, not KeyboardInterrupt itself: CPython marks the process for death by SIGINT when a
    plain KeyboardInterrupt leaves code run by exec or eval of a string (as library code does), even if it is
    caught further up, and the command would then end killed by SIGINT instead of exiting with 130."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated("SIGTERM")


INTERRUPTED = {
    "distill": "resume with: python -m seqmatch_engine distill --resume RUN (the run folder printed above)",
    "study": "run the same command again to resume the study (finished runs are kept)",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name_this_process(f"python -m seqmatch_engine {args.command}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # SIGTERM stops like Ctrl-C: states are recorded as stopped
    try:
        return args.func(args)
    except (ConfigError, DatasetError, RunError, StorageError, ValueError, ClusterError, Owned) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        tqdm.write("interrupted" + (f"; {INTERRUPTED[args.command]}" if args.command in INTERRUPTED else ""),
                   file=sys.stderr)  # below any progress bar
        return 130


if __name__ == "__main__":
    sys.exit(main())
