"""Where a case runs (docs/design.md#6-benchmarks): on CPU a fresh process per case, forked from a
server that has imported the harness, so that one case's allocations never hide another's peak
resident set; on CUDA this process, whose allocator statistics are per call already."""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Sequence
from typing import Any

import torch

from ._measure import COMPILED, Case, ModeResult, Outcome, failure, measure


def _child(case: Case, min_time: float, sender: Any) -> None:
    """Entry point of a case's fresh process: measure, send the outcome back."""
    if case.provider == COMPILED:
        import torch._inductor.config

        torch._inductor.config.compile_threads = 1  # no worker pool to outlive the case
    try:
        outcome = measure(case, min_time)
    except BaseException as error:  # the parent must always get an answer
        outcome = Outcome("", (failure(case.modes[0], error),))
    sender.send(outcome)
    sender.close()


class ForkedCases:
    """Runs each case in a fresh process, forked from a server that has imported the harness.

    A fresh process per case keeps one case's allocations from hiding another's peak; the fork
    server (it has done no tensor work, so no thread pool is copied) makes that cost
    milliseconds instead of a Python start-up.
    """

    def __init__(self, preload: Sequence[str], case_timeout: float) -> None:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        self.context = multiprocessing.get_context(method)
        if method == "forkserver":
            self.context.set_forkserver_preload([__name__, *preload])
        self.case_timeout = case_timeout

    def __call__(self, case: Case, min_time: float) -> Outcome:
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_child, args=(case, min_time, sender))
        process.start()
        sender.close()
        try:
            if receiver.poll(self.case_timeout):
                return receiver.recv()
            process.kill()
            status, note = "timeout", f"no result after {self.case_timeout:.0f} s"
        except EOFError:
            process.join()
            status, note = "killed", f"the case's process died (exit code {process.exitcode})"
            if process.exitcode == -9:
                note += ": killed, most likely out of memory"
        finally:
            process.join(timeout=30)  # a child that sent its outcome is finishing its exit
            if process.is_alive():
                process.kill()
                process.join()
            receiver.close()
        return Outcome("", (ModeResult(case.modes[0], status, note=note),))


def in_process(case: Case, min_time: float) -> Outcome:
    """Runs a case here (CUDA: the allocator's statistics are per call already)."""
    try:
        return measure(case, min_time)
    finally:
        gc.collect()
        torch.cuda.empty_cache()
