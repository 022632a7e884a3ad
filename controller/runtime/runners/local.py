"""`--runtime local`: every strategy as one proposer, its evaluations run one at a time in this
process with the evaluator the job built (no Ray)."""

from __future__ import annotations

from raynas.controller.runtime.runners.base import Runner
from raynas.workers.execution import InProcessExecutor


class LocalRunner(Runner):
    def run(self) -> bool:
        context = self.context
        context.open()
        try:
            context.run_proposer(InProcessExecutor(context.evaluator, on_report=context.reporter()))
        except KeyboardInterrupt:
            return True
        return False
