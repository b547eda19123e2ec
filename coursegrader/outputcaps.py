"""Outputs capped in bytes while they arrive, per cell and per notebook.

nbgrader's LimitOutput shortens outputs after the notebook has run, so a 30 MB print (or a hundred cells
of 2 MB) is held in the grader's memory first and a loop that prints for two minutes can exhaust it.
`CapOutputs` registers itself in the notebook's resources before GuardedExecute runs it (execution.py);
GuardedExecute hands it every output message (`admit`) and every finished cell (`shorten`). Past a cap,
text and figures are dropped with one note in the cell; errors and results are always kept, shortened,
because they are what the grade is made of.
"""

from __future__ import annotations

from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from . import integrity

MAX_TRACEBACK_LINES = 40  # of an error's traceback, the last lines are kept (a deep recursion has thousands)


class CapOutputs(NbGraderPreprocessor):
    """Caps on the outputs GuardedExecute keeps (it must come after this preprocessor)."""

    max_stream_bytes = Integer(100_000, help="printed text kept per cell").tag(config=True)
    max_output_bytes = Integer(2_000_000, help="outputs kept per cell (figures included)").tag(config=True)
    max_notebook_output_bytes = Integer(10_000_000, help="outputs kept per notebook; past it, only errors and "
                                                         "results, shortened").tag(config=True)
    max_message_chars = Integer(10_000, help="characters kept of an error message or a result").tag(config=True)

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        integrity.state(resources)["output_caps"] = self
        self.resources = resources
        self.dropped_noted = False  # once per notebook, however often it runs again
        self.start_run()
        return nb, resources

    def start_run(self) -> None:
        """The notebook runs (again, after a restart) from the top."""
        self.notebook_bytes, self.notebook_full = 0, False
        self.start_cell()

    def start_cell(self) -> None:
        self.cell_bytes, self.truncated = 0, False

    def admit(self, msg: dict, cell: NotebookNode, index: int) -> dict | None:
        """The output message to keep: `msg`, a stream message with a note in its place (once per cell), or None."""
        content = msg["content"]
        size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values())
        if msg["msg_type"] in ("stream", "display_data", "update_display_data"):
            cap = self.max_stream_bytes if msg["msg_type"] == "stream" else self.max_output_bytes
            over_cell = self.cell_bytes + size > cap
            over_notebook = self.notebook_bytes + size > self.max_notebook_output_bytes
            if over_cell or over_notebook:
                if over_notebook and not self.notebook_full:
                    self.notebook_full = True
                    self._note_dropped(cell, index)
                if self.truncated:
                    return None
                self.truncated = True
                text = (f"this cell printed more than {cap:,} bytes" if over_cell else
                        f"this notebook's outputs passed {self.max_notebook_output_bytes:,} bytes")
                note = {"name": "stdout", "text": f"\n[output truncated: {text}; the rest was not kept]\n"}
                # nbclient reads the type from the header: the note must be a stream there too
                return {**msg, "header": {**msg["header"], "msg_type": "stream"}, "msg_type": "stream", "content": note}
            self.cell_bytes += size
        self.notebook_bytes += size + len(str(content.get("traceback", "")))
        return msg

    def _note_dropped(self, cell: NotebookNode, index: int) -> None:
        """Once per notebook: a note in the student's row that outputs were not kept from this cell on."""
        if not self.dropped_noted:
            self.dropped_noted = True
            integrity.record(self.resources, cell, index, f"outputs past {self.max_notebook_output_bytes / 1e6:g} "
                             "MB per notebook were not kept, from this cell on", kind="note")

    def shorten(self, cell: NotebookNode) -> None:
        """Errors and results are kept, cut to max_message_chars (to a tenth of it, and the traceback to its last
        line, once the notebook's outputs are over their cap)."""
        n = self.max_message_chars // 10 if self.notebook_full else self.max_message_chars
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if len(out.get("evalue", "")) > n:
                    out.evalue = out.evalue[:n] + " ... [truncated]"
                keep = out.traceback[-1:] if self.notebook_full else out.traceback[-MAX_TRACEBACK_LINES:]
                out.traceback = [line[:n] for line in keep]
            if out.get("output_type") == "execute_result":
                for key, value in out.get("data", {}).items():
                    if isinstance(value, str) and len(value) > n:
                        out.data[key] = value[:n] + " ... [truncated]"
