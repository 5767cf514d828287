"""Lists of runs and studies that stay current: filled when a page loads and refreshed when the folders change."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.core.config import METHODS
from seqmatch_engine.interfaces.manager import JobManager
from views.compare_tab import CompareTab, run_choices
from views.diagnostics_tab import DiagnosticsTab, finished_runs
from views.runs_tab import RunsTab, run_rows
from views.studies_tab import StudiesTab, study_choices

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
        self.pickers = [self.runs.selected, self.diagnostics.runs, *self.compare.picks, self.studies.selected]
        outputs = [self.signature, self.runs.table, *self.pickers]
        demo.load(self.refresh, [self.signature, *self.pickers], outputs, api_name="lists")
        gr.Timer(LIST_POLL_SECONDS).tick(self.refresh, [self.signature, *self.pickers], outputs, concurrency_limit=None,
                                         show_progress="hidden", api_name=False)

    def refresh(self, signature: str, *picked):
        """Every list of runs and studies, when the folders changed since `signature` (else skip all). Each picker
        keeps its value while it is still a choice, and is left empty otherwise (a new list of choices must not
        quietly show its first entry as picked: picking it then would change nothing and show nothing)."""
        current = self.manager.library.signature()
        if current == signature:
            return {}  # nothing changed: every list stays as it is
        rows = run_rows(self.manager)
        choices = [[row[0] for row in rows], finished_runs(self.manager),
                   *[run_choices(self.manager, method) for method in METHODS], study_choices(self.manager)]
        updates = []
        for options, value in zip(choices, picked, strict=True):
            if isinstance(value, list):  # a multiselect keeps the picks that still exist
                updates.append(gr.update(choices=options, value=[v for v in value if v in options]))
            else:
                updates.append(gr.update(choices=options, value=value if value in options else None))
        return {self.signature: current, self.runs.table: rows, **dict(zip(self.pickers, updates, strict=True))}
