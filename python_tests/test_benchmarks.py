"""The benchmark harness (docs/design.md#6-benchmarks): statistics, memory, providers, CSV, plots,
CLI, GPU suite."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import amc_kernels
from amc_kernels import _dispatch, cli, functional, reference
from amc_kernels.benchmarks import (
    _cli,
    _harness,
    _isolation,
    _measure,
    _memory,
    _plan,
    _results,
    _roofline,
    _timing,
    plot,
    sanitizer_workload,
)
from amc_kernels.benchmarks._harness import Draw, Inputs, Peer, Variant
from amc_kernels.benchmarks._measure import Case, ModeResult
from amc_kernels.benchmarks._plan import Notes, Plan

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
LOSSES = ("angular_distance", "amc_loss", "supcon_loss")


def tiny_case(provider: str = "reference", modes: tuple[str, ...] = _harness.MODES) -> Case:
    return Case("angular_distance", "self", 8, 4, "float32", "cpu", provider, modes)


# --- declarations ---


@pytest.mark.parametrize("op", functional.__all__)
def test_every_op_has_a_bench_file(op: str) -> None:
    bench = _harness.load(op)
    assert bench.op == op
    assert (ROOT / "benchmarks" / f"bench_{op}.py").is_file()
    for variant in bench.variants:
        for mode in bench.modes:
            flops, nbytes = bench.work(variant.name, 64, 32, 4, mode)
            assert flops > 0 and nbytes > 0
    if op in LOSSES:  # the sweep: N from 256, D in {128, 512}
        for sweep in (bench.cpu, bench.cuda):
            assert sweep.sizes[0] == 256 and set(sweep.dims) == {128, 512}


@pytest.mark.parametrize("op", functional.__all__)
def test_bench_script_help_shows_its_analytic_work(
    op: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        _cli.main(_harness.load(op), ["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"bench_{op}.py" in out and "forward" in out and "--sizes" in out


def test_a_bench_file_runs_as_a_script() -> None:
    script = ROOT / "benchmarks" / "bench_amc_loss.py"
    options = ["--sweep", "quick", "--sizes", "16", "--dims", "8", "--min-time", "0.01"]
    done = subprocess.run(
        [sys.executable, str(script), *options, "--modes", "forward", "--no-csv", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(
        line.split()[:3] == ["amc_loss", "all-pairs", "N=16"] for line in done.stdout.splitlines()
    )


def test_backward_work_doubles_the_gemm() -> None:
    bench = _harness.load("supcon_loss")
    forward = bench.work("supcon", 256, 128, 4, "forward")
    backward = bench.work("supcon", 256, 128, 4, "backward")
    both = bench.work("supcon", 256, 128, 4, "forward+backward")
    assert forward[0] == 2 * 512 * 512 * 128 and backward[0] == 2 * forward[0]
    assert both == (forward[0] + backward[0], forward[1] + backward[1])


def test_draw_is_seeded_random_and_never_zero() -> None:
    one = Draw.seeded(CPU, torch.float32, "key").normal(1000)
    again = Draw.seeded(CPU, torch.float32, "key").normal(1000)
    other = Draw.seeded(CPU, torch.float32, "other key").normal(1000)
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert bool((one != 0).all())


# --- statistics, timing and memory ---


def test_quantiles_interpolate_between_samples() -> None:
    assert _timing.quantiles([5.0, 1.0, 3.0, 2.0, 4.0, 6.0]) == pytest.approx((3.5, 2.0, 5.0))
    assert _timing.quantiles([7.0]) == (7.0, 7.0, 7.0)


def test_cpu_timing_of_a_known_duration() -> None:
    samples = _timing.time_samples_ms(lambda: time.sleep(0.002), CPU, 0.02)
    median = _timing.quantiles(samples)[0]
    assert len(samples) >= 2 and 2.0 <= median < 100.0


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc")
def test_cpu_peak_memory_of_a_known_allocation() -> None:
    total, above = _memory.peak_memory_mb(lambda: torch.ones(16 * 2**20), CPU)  # 64 MB
    assert 60 <= above <= 80 and total > above


def test_measure_runs_every_mode_of_a_case() -> None:
    outcome = _measure.measure(tiny_case(), 0.01)
    assert outcome.shapes == "x[8,4]"
    assert [r.mode for r in outcome.results] == list(_harness.MODES)
    for result in outcome.results:
        assert result.status == "ok" and result.p20_ms <= result.median_ms <= result.p80_ms


@pytest.fixture
def fake_cpp_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cpp 'kernel' for angular_distance, as a later issue would register one."""
    registry = {op: dict(impls) for op, impls in _dispatch._REGISTRY.items()}
    monkeypatch.setattr(_dispatch, "_REGISTRY", registry)
    _dispatch.register("angular_distance", "cpp", reference.angular_distance)


def test_every_accepted_backend_becomes_a_provider(fake_cpp_kernel: None) -> None:
    bench, notes = _harness.load("angular_distance"), Notes()
    plan = Plan(CPU, compile=True)
    names = _plan.providers(bench, bench.variants[0], "float32", plan, notes)
    assert names[:3] == ["reference", "reference+compile", "cpp"]
    assert "cuda" not in names and any(r.startswith("cuda not run") for r in notes.ops)
    assert [r.status for r in _measure.measure(tiny_case("cpp"), 0.01).results] == ["ok"] * 3


def test_a_refused_backend_is_recorded_not_raised() -> None:
    (result,) = _measure.measure(tiny_case("cuda"), 0.01).results  # CPU tensors: always refused
    assert result.status == "refused" and "cuda" in result.note


def test_a_missing_peer_is_skipped_with_a_note() -> None:
    bench, notes = _harness.load("angular_distance"), Notes()
    peer = Peer("ghost-peer", "no_such_package_for_amc_kernels", lambda inputs: lambda: None)
    variant = Variant("self", bench.variants[0].inputs, (peer,))
    names = _plan.providers(bench, variant, "float32", Plan(CPU), notes)
    assert "ghost-peer" not in names
    assert any("pip install no_such_package_for_amc_kernels" in r for r in notes.ops)


def test_a_forward_only_peer_skips_the_backward_modes() -> None:
    pytest.importorskip("captum")
    case = Case(
        "gradcam", "mean-224", 2, 8, "float32", "cpu", "captum-LayerGradCam", _harness.MODES
    )
    statuses = [r.status for r in _measure.measure(case, 0.01).results]
    assert statuses == ["ok", "skipped", "skipped"]


def test_a_case_past_its_timeout_is_killed_and_recorded() -> None:
    (result,) = _isolation.ForkedCases([], case_timeout=0.001)(tiny_case(), 0.01).results
    assert result.status == "timeout"


def test_providers_reject_unknown_names_and_help_lists_the_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser, cli=True)
    assert parser.parse_args(["--providers", "cpp,captum-LayerGradCam"]).providers == (
        "cpp",
        "captum-LayerGradCam",
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--providers", "cpp,captum"])
    assert "expected comma-separated names from reference, reference+compile" in (
        capsys.readouterr().err
    )
    help_text = " ".join(parser.format_help().split())
    for name in ("triton", "pml-SupConLoss", "pml-NTXentLoss", "captum-LayerGradCam"):
        assert name in help_text
    one = argparse.ArgumentParser()
    _cli.add_arguments(one, cli=False, benches=[_harness.load("gradcam")])
    with pytest.raises(SystemExit):  # a peer of another op
        one.parse_args(["--providers", "pml-SupConLoss"])


def test_a_line_stopped_by_the_time_budget_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spent budget gives one "budget" row per provider line, in the table, not the CSV."""
    monkeypatch.setattr(_plan, "measure_roofline", lambda *a: _roofline.Roofline({}, 1.0))
    plan = Plan(CPU, sizes=(8, 16), dims=(4,), dtypes=("float32",), modes=("forward",))
    plan = dataclasses.replace(plan, providers=("reference", "cpp"), time_budget=0.0)
    rows = _plan.run([_harness.load("angular_distance")], plan, None, quiet=True)
    assert {(row["provider"], row["n"], row["status"]) for row in rows} == {
        ("reference", 8, "budget"),
        ("cpp", 8, "budget"),
    }
    assert all("time budget of 0 s was spent" in str(row["note"]) for row in rows)
    out = capsys.readouterr().out
    assert any(line.split()[6:8] == ["cpp", "budget"] for line in out.splitlines())


def test_sizes_grow_until_a_provider_gets_too_slow() -> None:
    ok = ModeResult("forward", "ok", median_ms=5.0)
    slow = ModeResult("forward", "ok", median_ms=50.0)
    assert _plan._stop_reason([ok], 10.0) == ""
    assert "--max-ms" in _plan._stop_reason([ok, slow], 10.0)
    oom = ModeResult("forward", "oom", note="CUDA out of memory")
    assert _plan._stop_reason([oom], 10.0) == "oom (CUDA out of memory)"


# --- peers compute what the reference computes ---


def _inputs(op: str, variant: str, n: int, d: int) -> tuple[Variant, Inputs]:
    chosen = _harness.load(op).variant(variant)
    return chosen, chosen.inputs(Draw.seeded(CPU, torch.float64, "peer"), n, d)


@pytest.mark.parametrize("variant", ["supcon", "simclr"])
def test_pml_peers_match_the_reference(variant: str) -> None:
    pytest.importorskip("pytorch_metric_learning")
    chosen, inputs = _inputs("supcon_loss", variant, 24, 8)
    expected = functional.supcon_loss(*inputs.args, **inputs.kwargs, backend="reference")
    got = chosen.peers[0].build(inputs)()
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_captum_peer_matches_the_reference() -> None:
    pytest.importorskip("captum")
    chosen, inputs = _inputs("gradcam", "mean-224", 3, 8)
    expected = functional.gradcam(*inputs.args, **inputs.kwargs, backend="reference")
    torch.testing.assert_close(chosen.peers[0].build(inputs)(), expected)


# --- results: CSV, table, plots ---


def _rows() -> list[dict[str, object]]:
    """A run's rows with made-up measurements: 2 sizes x 2 providers x 3 modes."""
    info = _results.provenance(CPU)
    roofline = _roofline.Roofline({"float32": 0.1}, 10.0)
    bench = _harness.load("angular_distance")
    rows = []
    for n in (8, 16):
        for provider, ms in (("reference", 2.0 * n), ("cpp", 0.5 * n)):
            case = Case("angular_distance", "self", n, 4, "float32", "cpu", provider, ())
            for mode in _harness.MODES:
                result = ModeResult(mode, "ok", ms, 0.9 * ms, 1.1 * ms, 5, 500.0, n / 8)
                rows.append(_plan._row(bench, case, f"x[{n},4]", result, info, roofline))
    return rows


def test_csv_rows_carry_provenance(tmp_path: Path) -> None:
    path = tmp_path / "results" / "device.csv"
    _results.append_rows(path, _rows())
    _results.append_rows(path, _rows())  # a second run appends below the same header
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and tuple(rows[0]) == _results.COLUMNS
    for row in rows:
        assert row["torch"] == torch.__version__ and row["amc_kernels"] == amc_kernels.__version__
        assert row["timestamp"] and row["git_sha"] and row["device"] and row["cuda"]
        assert float(row["tflops"]) > 0 and float(row["frac_copy_peak"]) > 0
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other columns"):
        _results.append_rows(tmp_path / "other.csv", [])


def test_csv_path_names_a_folder_by_device(tmp_path: Path) -> None:
    assert _results.csv_path(str(tmp_path), CPU) == tmp_path / f"{_results.device_slug(CPU)}.csv"
    assert _results.csv_path(str(tmp_path / "x.csv"), CPU) == tmp_path / "x.csv"
    assert _results.device_slug(CPU).startswith("cpu-")


def test_plot_draws_time_and_memory_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert plot.KEY == _results.KEY
    path = tmp_path / "device.csv"
    _results.append_rows(path, _rows())
    assert plot.main([str(path), "--out", str(tmp_path / "plots")]) == 0
    for name in ("time", "memory"):
        png = tmp_path / "plots" / f"angular_distance-{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_prints_the_table_and_appends_the_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--sizes", "16", "--dims", "8", "--min-time", "0.01", "--out", f"{tmp_path}/"]
    assert cli.main(["bench", "--op", "angular_distance", *options, "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("op "))
    assert header.split()[:3] == ["op", "variant", "size"]
    assert "vs reference" in header and "peak MB" in header
    assert any(line.split()[:3] == ["angular_distance", "self", "N=16"] for line in lines)
    (csv_file,) = tmp_path.glob("*.csv")
    with csv_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["mode"] for row in rows} == {"forward", "forward+backward"}
    assert "AMC_KERNELS_CHECK_VALUES" not in os.environ  # the run leaves the environment alone


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of CPU-only machines")
def test_gpu_suite_fails_fast_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode != 0
    assert "no CUDA GPU present: gpu_suite.sh is meant for the GPU machines" in done.stderr
    assert not out.exists()


@pytest.mark.cpp
def test_sanitizer_workload_runs_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    """The gpu_suite's compute-sanitizer workload, dry-run on CPU with the cpp backend."""
    argv = ["--device", "cpu", "--backend", "cpp", "--dtypes", "float32"]
    assert sanitizer_workload.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(amc_kernels._spec.OPS)
    assert all(" 0 failed" in line for line in lines)


def test_sanitizer_workload_reports_failing_calls(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--backend", "cuda", "--ops", "amc_loss", "--dtypes", "float32"]
    assert sanitizer_workload.main(argv) == 1
    assert "FAILED amc_loss/default" in capsys.readouterr().out
