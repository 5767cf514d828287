"""The whole app: one Blocks with a tab per task, a shared job manager and one poll timer."""
from __future__ import annotations

import functools

import gradio as gr

from seqmatch_engine.core.paths import ASSETS_DIR
from seqmatch_engine.interfaces.manager import JobManager
from seqmatch_engine.interfaces.queries import single_core
from views.compare_tab import CompareTab
from views.diagnostics_tab import DiagnosticsTab
from views.distil_tab import DistilTab
from views.learn_tab import LearnTab
from views.lists import RunLists
from views.live_view import LiveView
from views.runs_tab import RunsTab
from views.studies_tab import StudiesTab

POLL_SECONDS = 1.0
TITLE = "SeqMatch Studio"


def build_app(manager: JobManager) -> gr.Blocks:
    """Build the app around `manager` (which owns the background worker)."""
    distil = DistilTab(manager, LiveView(manager))
    compare = CompareTab(manager)
    diagnostics = DiagnosticsTab(manager)
    runs = RunsTab(manager)
    studies = StudiesTab(manager)
    learn = LearnTab()
    with gr.Blocks(title=TITLE, delete_cache=(600, 3600)) as demo:
        gr.HTML("<div class='sm-header'><h1>SeqMatch Studio</h1>"
                "<p>Watch dataset distillation work: sequential subset matching vs static MTT</p></div>")
        run_state = gr.BrowserState(None, storage_key="seqmatch-run")
        timer = gr.Timer(POLL_SECONDS)
        with gr.Tabs():
            with gr.Tab("Distil", id="distil"):
                distil.build()
            with gr.Tab("Compare", id="compare"):
                compare.build()
            with gr.Tab("Diagnostics", id="diagnostics"):
                diagnostics.build()
            with gr.Tab("Studies", id="studies"):
                studies.build()
            with gr.Tab("Runs", id="runs"):
                runs.build()
            with gr.Tab("Learn", id="learn"):
                learn.build()
        distil.wire(run_state, timer)
        compare.wire(timer)
        diagnostics.wire(timer)
        runs.wire(run_state)
        studies.wire(timer)
        RunLists(manager, runs, diagnostics, compare, studies).wire(demo)
        # Start is enabled by this load, so a first click can never race it (and be overwritten by it)
        demo.load(reattach(manager), run_state, [run_state, distil.start], queue=False)
    for handler in demo.fns.values():  # handlers run in Gradio's threads, beside the training worker
        if handler.fn is not None:
            handler.fn = readable_errors(single_core(handler.fn))
    return demo


def readable_errors(fn):
    """`fn`, but an unexpected failure shows its cause and what to do in the page, never Gradio's bare "Error"
    (handlers report the failures they expect themselves, as messages in their outputs)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise gr.Error(f"{type(error).__name__}: {error}. Runs on disk are untouched; reload the page, and if "
                           f"this repeats, the server's console has the details.", print_exception=True) from error

    return wrapper


def reattach(manager: JobManager):
    """On page load: keep this browser's run if the server knows it, else follow the active run, else show the
    latest finished one; then enable Start."""
    def handler(run_id: str | None):
        if not (run_id and manager.live(run_id) is not None):
            run_id = manager.active() or manager.latest()
        return run_id, gr.update(interactive=True)
    return handler


def launch_options() -> dict:
    return {"theme": gr.themes.Soft(primary_hue="blue", neutral_hue="slate"),
            "css_paths": [ASSETS_DIR / "style.css"]}
