"""The command line (docs/design.md#29-command-line): `info` and `check`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import amc_kernels
from amc_kernels import _dispatch, cli, reference
from amc_kernels._spec import OPS


def test_info_prints_versions_build_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"amc-kernels {amc_kernels.__version__}\n")
    assert f"torch {torch.__version__}" in out
    assert "amc_kernels._C: " in out
    for op in amc_kernels.functional.__all__:
        assert f"\n{op} " in out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    assert header.split() == ["op", "device", "reference", "cpp", "cuda", "triton", "auto"]


def test_check_passes_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for case in amc_kernels.testing.closed_form_cases():
        assert f"closed form: {case.name}" in out
    assert " 0 failed" in out


@pytest.fixture
def wrong_cpp_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cpp 'kernel' for angular_distance that is off by 1e-3: check must catch it."""
    registry = {op: dict(impls) for op, impls in _dispatch._REGISTRY.items()}
    monkeypatch.setattr(_dispatch, "_REGISTRY", registry)

    def off_by_a_little(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return reference.angular_distance(x, y) * (1 + 1e-3)

    _dispatch.register("angular_distance", "cpp", off_by_a_little)


def test_check_reports_a_wrong_backend(
    wrong_cpp_backend: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check"]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if " cpp " in line]
    assert any("angular_distance" in row and "FAIL" in row for row in rows)


def test_check_json_reports_every_backend_op_and_dtype(
    wrong_cpp_backend: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: one document; exit 1 because one backend fails, every other result passes."""
    assert cli.main(["check", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__
    assert report["devices"][0] == "cpu"
    assert report["ok"] is False and report["failed"] == 2  # float32 and float64
    assert report["passed"] + report["failed"] == len(report["results"])
    cpu = torch.device("cpu")
    status = {(r["op"], r["backend"], r["dtype"]): r["status"] for r in report["results"]}
    unavailable = {(u["op"], u["backend"]) for u in report["unavailable"] if u["device"] == "cpu"}
    for op in OPS:
        for backend in _dispatch.BACKENDS[1:]:
            if _dispatch.refusals(backend, cli.generic_call(op, cpu)):
                assert (op, backend) in unavailable
                continue
            for dtype in ("float32", "float64"):
                wrong = (op, backend) == ("angular_distance", "cpp")
                assert status[op, backend, dtype] == ("FAIL" if wrong else "PASS")
    closed_forms = [r for r in report["results"] if r["test"].startswith("closed form: ")]
    assert len(closed_forms) == len(amc_kernels.testing.closed_form_cases())
    assert all(r["max_error"] <= r["bound"] for r in closed_forms)


def test_module_entry_point_reports_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "amc_kernels", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"amc-kernels {amc_kernels.__version__}"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([])
    assert "required" in capsys.readouterr().err
