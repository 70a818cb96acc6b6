"""The precision benchmarks on CPU with the tiny model: int8 / fp8 as dtypes of benchmark_codecs.py, the interleaved
timing of precision_speed.py (ratios per round, failures recorded), and the comparisons of precision_quality.py."""

import json
import statistics
from types import SimpleNamespace

import pytest
import torch


pytest.importorskip("torchao")

from benchmarks import benchmark_codecs, precision_quality, precision_speed  # noqa: E402
from tests.model_helpers import speechlike_audio, tiny_config  # noqa: E402
from transformers_stable_codec import StableCodecModel  # noqa: E402


def test_int8_and_fp8_are_dtypes_of_the_benchmark(tmp_path):
    path = tmp_path / "results.json"
    benchmark_codecs.main(
        ["--device", "cpu", "--config", "tiny", "--repeats", "1", "--warmup", "1", "--ceiling-size", "128"]
        + ["--contenders", "stable-codec", "mimi", "--scenarios", "1x2s", "--workloads", "both", "--backends", "sdpa"]
        + ["--dtypes", "int8", "bf16", "fp8", "--json", str(path)]
    )
    cases = {(case["contender"], case["dtype"]): case for case in json.loads(path.read_text())["cases"].values()}
    assert cases[("stable-codec", "int8")]["status"] == "ok"
    assert cases[("stable-codec", "bf16")]["status"] == "ok"  # after int8: rebuilt from unquantized weights
    fp8 = cases[("stable-codec", "fp8")]
    assert fp8["status"] == "error" and "compute capability" in fp8["reason"]
    assert cases[("mimi", "int8")]["status"] == "skipped"


def test_interleaved_ratios_are_per_round_and_failures_are_recorded(tmp_path):
    path = tmp_path / "speed.json"
    precision_speed.main(
        ["--device", "cpu", "--config", "tiny", "--scenarios", "1x1s", "--rounds", "3", "--warmup", "1"]
        + ["--variants", "bf16", "int8", "fp8", "--json", str(path)]
    )
    (run,) = json.loads(path.read_text())["runs"].values()
    (scenario,) = run["scenarios"]
    variants = scenario["variants"]
    bf16, int8, fp8 = variants["bf16:none"], variants["int8:none"], variants["fp8:none"]
    assert scenario["baseline"] == "bf16:none" and len(bf16["times_s"]) == len(int8["times_s"]) == 3
    per_round = [base / quantized for base, quantized in zip(bf16["times_s"], int8["times_s"])]
    assert int8["speedup_vs_baseline_per_round"] == pytest.approx(per_round)
    assert int8["speedup_vs_baseline"]["median"] == pytest.approx(statistics.median(per_round))
    assert int8["throughput_x"] == pytest.approx(scenario["audio_seconds"] / statistics.median(int8["times_s"]))
    assert int8["quantized_layer_count"] == 24  # 4 projections x 3 layers x 2 sides
    if not torch.cuda.is_available():
        assert fp8["status"] == "error" and "compute capability" in fp8["reason"]


def test_a_scenario_that_would_not_fit_the_budget_is_left_out_whole(tmp_path):
    path = tmp_path / "speed.json"
    precision_speed.main(
        ["--device", "cpu", "--config", "tiny", "--scenarios", "1x1s", "1x2s", "--rounds", "1", "--warmup", "1"]
        + ["--variants", "bf16", "fp32", "--time-budget-s", "0.001", "--json", str(path)]
    )
    (run,) = json.loads(path.read_text())["runs"].values()
    statuses = [[entry["status"] for entry in scenario["variants"].values()] for scenario in run["scenarios"]]
    # The first variant of the first scenario starts (nothing predicts it); the rest would pass the budget.
    assert statuses[1] == ["not run", "not run"]


def test_codes_agreement_and_latent_error_are_what_the_outputs_say():
    reference = {
        "codes": {name: [torch.tensor([[1, 2, 3, 4]])] for name in precision_quality.BOTTLENECKS},
        "latents": [torch.tensor([3.0, 4.0])],
    }
    other = {
        "codes": {name: [torch.tensor([[1, 2, 0, 4]])] for name in precision_quality.BOTTLENECKS},
        "latents": [torch.tensor([3.0, 4.5])],
    }
    compared = precision_quality.compare(other, reference)
    assert set(compared["codes_agreement"].values()) == {0.75}
    assert compared["latent_relative_error"] == pytest.approx(0.5 / 5.0)


def test_variants_parse():
    assert precision_speed.parse_variant("fp8:reduce-overhead") == ("fp8", "reduce-overhead")
    assert precision_speed.parse_variant("int8") == ("int8", "none")
    # Static int8 is compiled with freezing by construction: no other compile mode is accepted for it.
    assert precision_speed.parse_variant("int8-static") == ("int8-static", "freezing")
    assert precision_speed.parse_variant("int8-static:freezing") == ("int8-static", "freezing")
    with pytest.raises(Exception, match="PRECISION\\[:COMPILE\\]"):
        precision_speed.parse_variant("int8-static:none")
    with pytest.raises(Exception, match="PRECISION\\[:COMPILE\\]"):
        precision_speed.parse_variant("int4:none")


@pytest.mark.slow
def test_static_int8_is_measured_against_its_own_calibration(tmp_path):
    """The static int8 variant of both benchmarks on the tiny model: timed interleaved with bf16, and compared with
    fp32 (its 12 LayerNorm-fed projections quantized, its tokens mostly fp32's)."""
    speed = precision_speed.main(
        ["--device", "cpu", "--config", "tiny", "--scenarios", "1x1s", "--rounds", "2", "--warmup", "1"]
        + ["--variants", "bf16:freezing", "int8-static"]
    )
    (run,) = speed["runs"].values()
    entry = run["scenarios"][0]["variants"]["int8-static:freezing"]
    assert entry["status"] == "ok" and entry["quantized_layer_count"] == 12 and len(entry["times_s"]) == 2
    clips = list(speechlike_audio(3, 16000, 16000, torch.device("cpu"), 4).split(1))
    clips[2] = clips[2][..., :12800]  # a second length: that codec calibrates on the two others, cut to it
    torch.manual_seed(0)
    model = StableCodecModel(tiny_config()).eval()
    args = SimpleNamespace(precisions=["fp32", "int8-static"], device="cpu")
    results = precision_quality.measure_model("tiny", model, clips, args, None, lambda *_: None)
    static = results["int8-static"]
    assert static["status"] == "ok", static
    assert static["codes_agreement"]["training"] >= 0.8 and 0 < static["latent_relative_error"] < 0.03


@pytest.mark.slow
def test_call_overhead_benchmark_pairs_every_precision_with_its_frozen_twin(tmp_path):
    """quantized_call_overhead.py on the tiny model: each precision plain and frozen, the frozen one's codes compared
    with its twin's, and the quantized layers' host time per layer against bf16 in the same mode (not its value:
    no timing is asserted)."""
    from benchmarks import quantized_call_overhead

    path = tmp_path / "overhead.json"
    results = quantized_call_overhead.main(
        ["--config", "tiny", "--scenario", "1x1s", "--precisions", "bf16", "int8", "--rounds", "2", "--warmup", "1"]
        + ["--json", str(path)]
    )
    assert json.loads(path.read_text())["variants"].keys() == results["variants"].keys()
    variants = results["variants"]
    assert list(variants) == ["bf16:default", "bf16:freezing", "int8:default", "int8:freezing"]
    assert all(entry["status"] == "ok" and len(entry["wall_s"]) == 2 for entry in variants.values())
    assert variants["int8:freezing"]["codes_equal_to_plain"] and variants["bf16:freezing"]["codes_equal_to_plain"]
    assert variants["int8:default"]["quantized_layers"] == 24 and variants["bf16:default"]["quantized_layers"] == 0
    assert "extra_around_graphs_us_per_layer" in variants["int8:freezing"]
    assert "extra_around_graphs_us_per_layer" not in variants["bf16:freezing"]
