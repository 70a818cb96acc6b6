"""The benchmark's machinery (benchmarks/benchmark_codecs.py) on CPU with tiny models: the arithmetic of what it
reports, its FLOP count against a hand count, failures recorded per case, the time budget, and the results file."""

import argparse
import json
import math
import statistics

import pytest
import torch

from benchmarks import benchmark_codecs, report
from benchmarks.contenders import StableCodecContender
from benchmarks.original_codec import original_model_config
from transformers_stable_codec import StableCodecConfig

from .model_helpers import tiny_config


COMMON = ["--device", "cpu", "--config", "tiny", "--repeats", "3", "--warmup", "1", "--ceiling-size", "256"]


def run(tmp_path, *options, name="results.json"):
    path = tmp_path / name
    returned = benchmark_codecs.main([*COMMON, "--json", str(path), *options])
    return returned, json.loads(path.read_text())


def cases_of(results, **fields):
    return [case for case in results["cases"].values() if all(case[key] == value for key, value in fields.items())]


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Ours on a 4 s clip: stage 1 (200 frames) attends in query blocks, stage 2 (100 frames) over all frames."""
    return run(
        tmp_path_factory.mktemp("bench"),
        "--contenders",
        "stable-codec",
        "--scenarios",
        "1x4s",
        "2x2s",
        "--backends",
        "sdpa",
        "eager",
        "flex_attention",
        "flash_attention_2",
    )


def test_throughput_memory_and_ceiling_fraction_are_what_the_timings_say(ours):
    returned, saved = ours
    assert saved["cases"] == json.loads(json.dumps(returned["cases"]))
    ((run_id, run_record),) = saved["runs"].items()
    measured = cases_of(saved, status="ok")
    assert len(measured) == 2 * 2 * 3  # eager and sdpa, two scenarios, three workloads
    for case in measured:
        assert case["run"] == run_id and len(case["times_s"]) == 3 and len(case["warmup_s"]) == 1
        assert case["median_s"] == statistics.median(case["times_s"])
        batch, seconds = benchmark_codecs.parse_scenario(case["scenario"])
        assert case["audio_seconds"] == pytest.approx(batch * seconds)  # 16 kHz, whole 640-sample frames
        assert case["throughput_x"] == pytest.approx(case["audio_seconds"] / case["median_s"], rel=1e-12)
        ceiling = run_record["ceilings"][case["dtype"]]["tflops"] * 1e12
        assert case["ceiling_tflops"] * 1e12 == pytest.approx(ceiling)
        expected = case["flops_per_audio_second"] * case["throughput_x"] / ceiling
        assert case["ceiling_fraction"] == pytest.approx(expected, rel=1e-12)
        assert case["peak_memory_gib"] > 0.05  # the process's peak RSS: at least torch itself
    counts = run_record["flops"]["stable-codec"]
    for case in measured:
        entry = counts[str(case["samples_per_clip"])]
        per_second = {"encode": entry["encode"]["per_audio_second"], "decode": entry["decode"]["per_audio_second"]}
        per_second["both"] = per_second["encode"] + per_second["decode"]
        assert case["flops_per_audio_second"] == per_second[case["workload"]]


def hand_count_tiny(seconds: float) -> int:
    """Matmul and convolution FLOPs of one encode of the tiny config (patch 320, widths 128 then 256 at 50 and
    25 Hz, depths 1 and 2, head dim 128, window 3 + 4), counted by hand: a linear layer of n inputs and m outputs
    costs 2nm per frame; attention 2 * queries * keys * head_dim for the scores and as much for the values, over
    query blocks of 64 frames with 64 + 3 + 4 keys when a stage has more than 71 frames, else over all frames."""
    frames_50, frames_25 = int(50 * seconds), int(25 * seconds)

    def transformer_layer(width, frames):
        linear = 2 * frames * (width * 3 * width + width * width + width * 8 * width + 4 * width * width)
        heads = width // 128
        if frames > 71:
            attention = math.ceil(frames / 64) * heads * 2 * (2 * 64 * 71 * 128)
        else:
            attention = heads * 2 * (2 * frames * frames * 128)
        return linear + attention

    input_conv = 2 * frames_50 * 320 * 128 * 7
    downsample = 2 * frames_25 * 128 * 256 * 4
    output_conv = 2 * frames_25 * 256 * 6 * 3
    return (
        input_conv
        + transformer_layer(128, frames_50)
        + downsample
        + 2 * transformer_layer(256, frames_25)
        + output_conv
    )


def test_flop_count_equals_the_hand_count(ours):
    _, saved = ours
    (run_record,) = saved["runs"].values()
    counts = run_record["flops"]["stable-codec"]
    for seconds in (4, 2):
        entry = counts[str(16000 * seconds)]
        assert entry["encode"]["total"] == hand_count_tiny(seconds)
        assert entry["decode"]["total"] == hand_count_tiny(seconds)  # the decoder mirrors the encoder
        assert entry["encode"]["per_audio_second"] == hand_count_tiny(seconds) / seconds
        assert 0 < entry["encode"]["attention_share"] < 0.2
        assert "query blocks of 64 frames x 71 keys" in entry["note"]


def test_eager_path_counts_the_same_flops_as_sdpa():
    torch.manual_seed(0)
    from transformers_stable_codec import StableCodecModel

    contender = StableCodecContender(StableCodecModel(tiny_config()).eval().requires_grad_(False))
    audio = torch.randn(1, 1, 64000) * 0.1
    for backend in ("eager", "flex_attention"):  # flex is counted on the sdpa path
        contender.configure(backend, "none")
        with torch.inference_mode(), contender.flop_counting():
            counted = benchmark_codecs.count_flops(lambda: contender.encode(audio))
        assert counted["total"] == hand_count_tiny(4)
        assert contender.model.config._attn_implementation == backend


def test_unavailable_backends_are_skipped_with_their_reason(ours):
    _, saved = ours
    flex = cases_of(saved, attention="flex_attention")
    flash = cases_of(saved, attention="flash_attention_2")
    assert len(flex) == len(flash) == 2 * 3
    assert all(case["status"] == "skipped" and "CPU" in case["reason"] for case in flex)
    assert all(case["status"] == "skipped" and "flash" in case["reason"] for case in flash)


def test_tables_show_the_recorded_numbers(ours, tmp_path, capsys):
    _, saved = ours
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(saved))
    benchmark_codecs.main(["--report", str(path)])
    printed = capsys.readouterr().out
    case = cases_of(saved, attention="sdpa", scenario="2x2s", workload="both")[0]
    expected = report.format_throughput(case["throughput_x"]) + report.format_fraction(case["ceiling_fraction"])
    row = next(
        line for line in printed.splitlines() if line.startswith("CPU") and " sdpa " in line and "2 x 2 s" in line
    )
    assert expected in row
    markdown_row = next(
        line
        for line in printed.splitlines()
        if line.startswith("| CPU") and "| sdpa |" in line and "| 2 x 2 s |" in line
    )
    assert f"| {expected} |" in markdown_row
    skipped_row = next(line for line in printed.splitlines() if " flex_attention " in line and "1 x 4 s" in line)
    footnote = skipped_row.split("skipped [")[1].split("]")[0]
    assert f"[{footnote}] skipped: our model refuses flex_attention on CPU" in printed
    assert report.format_throughput(1234.4) == "1,234x" and report.format_throughput(6.34) == "6.3x"


def test_results_files_merge_by_case(ours, tmp_path):
    _, saved = ours
    first, second = json.loads(json.dumps(saved)), json.loads(json.dumps(saved))
    key = next(iter(second["cases"]))
    second["cases"][key]["throughput_x"] = -1.0
    extra = dict(second["cases"][key], scenario="9x9s")
    second["cases"]["extra"] = extra
    merged = report.merge_results(first, second)
    assert merged["cases"][key]["throughput_x"] == -1.0 and "extra" in merged["cases"]
    assert len(merged["cases"]) == len(first["cases"]) + 1
    path = tmp_path / "merged.json"
    report.save_results(path, first)
    report.save_results(path, {**report.new_results(), "cases": {"extra": extra}})
    assert set(json.loads(path.read_text())["cases"]) == set(first["cases"]) | {"extra"}


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def decode_out_of_memory(self, codes):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")

    monkeypatch.setattr(StableCodecContender, "decode", decode_out_of_memory)
    _, saved = run(tmp_path, "--contenders", "stable-codec", "--scenarios", "1x2s", "1x3s", "--repeats", "1")
    statuses = {(case["scenario"], case["workload"]): case["status"] for case in saved["cases"].values()}
    assert statuses == {
        (scenario, workload): ("ok" if workload == "encode" else "oom")
        for scenario in ("1x2s", "1x3s")
        for workload in ("encode", "decode", "both")
    }
    decode = cases_of(saved, workload="decode")[0]
    assert decode["reason"] == "OOM (tried to allocate 20.00 GiB more)" and "throughput_x" not in decode
    (run_record,) = saved["runs"].values()
    assert len(run_record["errors"]) == 4 and "OutOfMemoryError" in run_record["errors"][0]["traceback"]


def test_failure_descriptions():
    status, reason = benchmark_codecs.describe_failure(RuntimeError("shapes do not match\nmore"), torch.device("cpu"))
    assert (status, reason) == ("error", "RuntimeError: shapes do not match")
    status, reason = benchmark_codecs.describe_failure(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), torch.device("cpu")
    )
    assert status == "oom"


def test_time_budget_stops_the_sweep_and_keeps_the_run(tmp_path):
    _, saved = run(tmp_path, "--contenders", "stable-codec", "--scenarios", "1x2s", "--time-budget-s", "0")
    (run_record,) = saved["runs"].values()
    assert saved["cases"] == {}
    assert len(run_record["stopped"]["left"]) == 3 and "time budget" in run_record["stopped"]["reason"]


def test_scenarios_parse():
    assert benchmark_codecs.parse_scenario("16x10s") == (16, 10.0)
    assert benchmark_codecs.parse_scenario("1x0.5s") == (1, 0.5)
    for wrong in ("10s", "0x10s", "1x10", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            benchmark_codecs.parse_scenario(wrong)


def test_peers_run_through_their_own_apis(tmp_path):
    _, saved = run(
        tmp_path, "--contenders", "mimi", "dac", "xcodec2", "--scenarios", "1x1s", "--repeats", "1", "--warmup", "0"
    )
    (run_record,) = saved["runs"].values()
    for name, rate in (("mimi", 24000), ("dac", 16000), ("xcodec2", 16000)):
        cases = cases_of(saved, contender=name)
        assert [case["status"] for case in cases] == ["ok"] * 3, [case["reason"] for case in cases]
        assert all(case["sampling_rate"] == rate for case in cases)
        hop = run_record["contenders"][name]["hop_length"]
        assert cases[0]["samples_per_clip"] == math.ceil(rate / hop) * hop
        counts = next(iter(run_record["flops"][name].values()))
        assert counts["encode"]["total"] > 0 and counts["decode"]["total"] > 0


def test_original_layout_round_trips_through_the_converter():
    tiny = tiny_config()
    assert StableCodecConfig.from_original_config(original_model_config(tiny)).to_dict() == tiny.to_dict()
    shipped = json.loads(benchmark_codecs.PAPER_CONFIG.read_text())
    rebuilt = original_model_config(StableCodecConfig.from_original_config(shipped))
    for section in ("pretransform", "encoder", "decoder"):
        assert rebuilt["model"][section] == shipped["model"][section]
    assert benchmark_codecs.load_config("paper").to_dict() == StableCodecConfig.from_original_config(shipped).to_dict()


def test_the_original_builds_and_runs_in_process(tmp_path):
    """Needs stable-audio-tools 0.0.17 and friends (benchmarks/README.md); skipped where they are not installed."""
    pytest.importorskip("stable_audio_tools")
    _, saved = run(tmp_path, "--contenders", "original", "stable-codec", "--scenarios", "1x4s", "--repeats", "1")
    assert all(case["status"] == "ok" for case in saved["cases"].values())
    (run_record,) = saved["runs"].values()
    original, ours = run_record["flops"]["original"]["64000"], run_record["flops"]["stable-codec"]["64000"]
    for workload in ("encode", "decode"):
        # The same linear layers and convolutions; attention over all 200 and 100 frames instead of the window.
        without_attention = {op: count for op, count in ours[workload]["by_op"].items() if "scaled_dot" not in op}
        assert {
            op: count for op, count in original[workload]["by_op"].items() if op != "aten.bmm"
        } == without_attention
        assert original[workload]["by_op"]["aten.bmm"] == 2 * (2 * 200 * 200 * 128) + 2 * 2 * 2 * (2 * 100 * 100 * 128)


def test_kernel_profile_sums_categories_and_finds_idle_gaps():
    from benchmarks.profile_kernels import kernel_category, kernel_summary

    assert kernel_category("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_bias_TNN") == "matmul"
    # cuBLAS's fp8 kernels (seen on the H200 for torchao's rowwise fp8) and the fused activation-quantizing kernel
    assert kernel_category("nvjet_sm90_qqtst_128x128_128x6_4x2_h_bz_ovscale_bias_TNT") == "fp8 matmul"
    assert kernel_category("triton_red_fused__scaled_mm__to_copy_abs_amax_clamp_div_mul_silu_split_7") == "triton"
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7") == "attention"
    assert kernel_category("triton_poi_fused__scaled_dot_product_cudnn_attention__unsafe_view_3") == "triton"
    assert kernel_category("void at::native::vectorized_elementwise_kernel<4>") == "other"
    kernels = [  # (name, start us, end us), out of order, one overlap, one 200 us gap
        ("triton_poi_fused_mul_silu_1", 1100.0, 1300.0),
        ("nvjet_gemm", 0.0, 1000.0),
        ("cudnn_flash_fprop", 1000.0, 1100.0),
        ("triton_red_layer_norm_2", 1250.0, 1280.0),
        ("nvjet_gemm", 1500.0, 2000.0),
    ]
    summary = kernel_summary(kernels)
    assert summary["kernels"] == 5 and summary["span_ms"] == 2.0
    assert math.isclose(summary["busy_ms"], 1.83)
    assert summary["by_category_ms"] == pytest.approx({"matmul": 1.5, "attention": 0.1, "triton": 0.23})
    assert summary["gaps"] == [{"ms": 0.2, "before": "nvjet_gemm"}]


def test_tokenize_benchmark_counts_clips_and_tokens_that_differ_from_the_first_run(monkeypatch):
    """A pipeline race or a run-to-run kernel change shows as clips (and tokens) unlike the first run's: one token
    flipped in one of two clips, and a clip missing, must both count."""
    from benchmarks import tokenize_corpus

    outputs = {
        "first": {"a": [[1, 2, 3], [4, 5, 6]], "b": [[7, 8], [9, 10]]},
        "flipped": {"a": [[1, 2, 3], [4, 0, 6]], "b": [[7, 8], [9, 10]]},
        "missing": {"a": [[1, 2, 3], [4, 5, 6]]},
    }
    monkeypatch.setattr(tokenize_corpus, "codes_by_id", lambda folder: outputs[folder.name])
    runs = [{"output_dir": name, "batch_seconds": 320.0, "code": "branch"} for name in outputs]
    tokenize_corpus.agreement(runs)
    assert [run["same_codes_as_first_run"]["same"] for run in runs] == [2, 1, 1]
    assert [run["same_codes_as_first_run"]["token_agreement"] for run in runs] == [1.0, 9 / 10, 6 / 10]
