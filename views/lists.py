"""Lists of runs and studies that stay current: filled when a page loads and refreshed when the folders change."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.manager import JobManager
from seqmatch_engine.runs import folder_signature

from .compare_tab import CompareTab, run_choices
from .diagnostics_tab import DiagnosticsTab, finished_runs
from .runs_tab import RunsTab, run_rows
from .studies_tab import StudiesTab, study_choices

LIST_POLL_SECONDS = 3.0


@dataclass
class RunLists:
    manager: JobManager
    runs: RunsTab
    diagnostics: DiagnosticsTab
    compare: CompareTab
    studies: StudiesTab

    def wire(self, demo: gr.Blocks) -> None:
        self.signature = gr.State("")
        outputs = [self.signature, self.runs.table, self.runs.selected, self.diagnostics.runs, self.compare.pick_mtt,
                   self.compare.pick_seq, self.studies.selected]
        demo.load(self.refresh, self.signature, outputs, api_name="lists")
        gr.Timer(LIST_POLL_SECONDS).tick(self.refresh, self.signature, outputs, concurrency_limit=None,
                                         show_progress="hidden", api_name=False)

    def refresh(self, signature: str):
        """Every list of runs and studies, when the folders changed since `signature` (else skip all)."""
        current = folder_signature(self.manager.runs_root) + folder_signature(self.manager.studies_root)
        if current == signature:
            return [signature, *[gr.skip()] * 6]
        rows = run_rows(self.manager)
        return [current, rows, gr.update(choices=[row[0] for row in rows]),
                gr.update(choices=finished_runs(self.manager)), gr.update(choices=run_choices(self.manager, "mtt")),
                gr.update(choices=run_choices(self.manager, "seqmatch")), gr.update(choices=study_choices(self.manager))]
