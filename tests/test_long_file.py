"""A 10-minute file through `stable-codec reconstruct` (the demo model) in bounded memory (issue #19): before, the
command grew to 6.2 GB and PESQ crashed on the whole file; now coding goes in chunks and the metrics in windows."""

import json
import re

import pytest
import soundfile

from scripts.long_file_peak_rss import make_long_speech, run_measured, speech_clip


pytestmark = pytest.mark.slow

# Measured on 2 CPU cores: 621 MiB peak RSS for 1 minute, 787 MiB for 10 (the samples, held a few times over, add
# about 18 MiB a minute). The bounds leave room for other builds of torch and numpy.
PEAK_RSS_BOUND_MIB = 1100
GROWTH_BOUND_MIB = 400  # from 1 to 10 minutes


def reconstruct_measured(folder, minutes, clip) -> tuple[dict, dict]:
    source = make_long_speech(folder / f"long_{minutes}.wav", minutes, clip)
    result = run_measured(["reconstruct", str(source), "-o", str(folder / "out")])
    assert result["returncode"] == 0, result["output_tail"]
    assert soundfile.info(folder / "out" / source.name).frames == minutes * 60 * 16000
    scores = {name: float(value) for name, value in re.findall(r"(\w+) (-?\d+\.\d+|nan)", result["output_tail"])}
    return result, scores


@pytest.mark.timeout(900)
def test_a_ten_minute_file_is_reconstructed_in_bounded_memory(tmp_path):
    clip = speech_clip(None, tmp_path)
    short, _ = reconstruct_measured(tmp_path, 1, clip)
    long, scores = reconstruct_measured(tmp_path, 10, clip)
    assert 1.0 < scores["wideband_pesq"] < 4.7 and 0 < scores["stoi"] <= 1, scores  # scored, window by window
    report = json.dumps({"1 minute": short["peak_rss_mib"], "10 minutes": long["peak_rss_mib"]})
    assert long["peak_rss_mib"] < PEAK_RSS_BOUND_MIB, report
    assert long["peak_rss_mib"] - short["peak_rss_mib"] < GROWTH_BOUND_MIB, report
