"""The `stable-codec` command line, driven through real subprocesses on real (espeak-ng) speech files."""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tomllib
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transformers_stable_codec import StableCodecFeatureExtractor, StableCodecModel, cli, command_support
from transformers_stable_codec.metrics import functional

from .conftest import randomize_, synthesize_speech, tiny_config


REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_cli(*arguments, expect_success: bool = True, text: bool = True) -> subprocess.CompletedProcess:
    """Runs the installed console script if there is one beside this interpreter, else the same `main` via -m.
    `text=False` keeps stdout as bytes (for audio written there)."""
    script = pathlib.Path(sys.executable).with_name("stable-codec")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "transformers_stable_codec.cli"]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [*command, *map(str, arguments)], capture_output=True, text=text, env=environment, timeout=300
    )
    assert (result.returncode == 0) == expect_success, result.stderr
    return result


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory) -> list[pathlib.Path]:
    folder = tmp_path_factory.mktemp("speech")
    return [
        synthesize_speech(folder / "birch.wav", "The birch canoe slid on the smooth planks.", 22050),
        synthesize_speech(folder / "sheet.flac", "Glue the sheet to the dark blue background.", 44100, channels=2),
    ]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config()), seed=1).eval()
    model.save_pretrained(folder)
    StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length).save_pretrained(folder)
    return folder


def model_input(path: pathlib.Path) -> torch.Tensor:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return StableCodecFeatureExtractor()(audio.T, sampling_rate=rate, return_tensors="pt")["input_values"]


def test_the_console_script_is_declared():
    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["stable-codec"] == "transformers_stable_codec.cli:main"
    assert callable(cli.main)


def test_encode_then_decode_matches_the_model(tmp_path, speech_files, tiny_model_dir):
    result = run_cli(
        "encode", *speech_files, "--model", tiny_model_dir, "--bottleneck", "4x729_1000bps", "-o", tmp_path / "codes"
    )
    assert "encode: 100%" in result.stderr and "2/2" in result.stderr  # the progress bar over files
    model = StableCodecModel.from_pretrained(tiny_model_dir).eval()
    for source in speech_files:
        codes_path = tmp_path / "codes" / f"{source.stem}.codes.safetensors"
        with safe_open(codes_path, "pt") as handle:
            metadata, codes = handle.metadata(), handle.get_tensor("audio_codes")
        expected_input = model_input(source)
        num_samples = round(soundfile.info(source).duration * 16000)
        assert metadata["format"] == "stable-codec-codes/1"
        assert (metadata["model"], metadata["bottleneck"]) == (str(tiny_model_dir), "4x729_1000bps")
        assert (metadata["sampling_rate"], metadata["hop_length"]) == ("16000", "640")
        assert abs(int(metadata["num_samples"]) - num_samples) <= 1
        with torch.no_grad():
            expected = model.encode(expected_input, posthoc_bottleneck="4x729_1000bps").audio_codes[0]
        assert codes.dtype == torch.int64 and codes.shape == (4, expected.shape[-1])
        torch.testing.assert_close(codes, expected, rtol=0, atol=0)

    result = run_cli("decode", tmp_path / "codes", "-o", tmp_path / "decoded")  # the model named in the files
    assert "decode: 100%" in result.stderr
    for source in speech_files:
        with safe_open(tmp_path / "codes" / f"{source.stem}.codes.safetensors", "pt") as handle:
            codes, num_samples = handle.get_tensor("audio_codes"), int(handle.metadata()["num_samples"])
        decoded, rate = soundfile.read(tmp_path / "decoded" / f"{source.stem}.wav", dtype="float32")
        with torch.no_grad():
            expected = model.decode(codes[None], posthoc_bottleneck="4x729_1000bps").audio_values[0, 0, :num_samples]
        assert rate == 16000 and decoded.shape == (num_samples,)
        np.testing.assert_allclose(decoded, expected.numpy(), rtol=0, atol=1e-6)


def test_model_options_reach_the_model(tmp_path, speech_files, tiny_model_dir):
    source = speech_files[0]
    run_cli(
        "encode",
        source,
        "--model",
        tiny_model_dir,
        "--bottleneck",
        "none",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--attn-implementation",
        "eager",
        "-o",
        tmp_path,
    )
    with safe_open(tmp_path / f"{source.stem}.codes.safetensors", "pt") as handle:
        codes = handle.get_tensor("audio_codes")
    model = StableCodecModel.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = model.encode(model_input(source).to(torch.bfloat16)).audio_codes[0]
        float32 = StableCodecModel.from_pretrained(tiny_model_dir).eval().encode(model_input(source)).audio_codes[0]
    torch.testing.assert_close(codes, expected, rtol=0, atol=0)
    assert not torch.equal(codes, float32)  # bfloat16 did change something: the option was not ignored


def test_chunked_coding_gives_the_same_files(tmp_path, speech_files, tiny_model_dir):
    source = speech_files[0]  # about 3 s: six chunks of 0.5 s
    for name, extra in (("whole", []), ("chunked", ["--chunk-length-s", "0.5"])):
        run_cli("encode", source, "--model", tiny_model_dir, *extra, "-o", tmp_path / name)
        run_cli("decode", tmp_path / name, *extra, "-o", tmp_path / f"{name}_audio")
    codes = []
    for name in ("whole", "chunked"):
        with safe_open(tmp_path / name / f"{source.stem}.codes.safetensors", "pt") as handle:
            codes.append(handle.get_tensor("audio_codes"))
    torch.testing.assert_close(codes[0], codes[1], rtol=0, atol=0)
    whole, _ = soundfile.read(tmp_path / "whole_audio" / f"{source.stem}.wav", dtype="float32")
    chunked, _ = soundfile.read(tmp_path / "chunked_audio" / f"{source.stem}.wav", dtype="float32")
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4)
    # The option reaches the model: a chunk shorter than one frame is refused by it.
    failed = run_cli(
        "encode", source, "--model", tiny_model_dir, "--chunk-length-s", "0.01", "-o", tmp_path, expect_success=False
    )
    assert "chunk_length_s" in failed.stderr


def test_reconstruct_prints_bitrate_and_metrics(tmp_path, speech_files):
    source = speech_files[1]
    result = run_cli("reconstruct", source, "-o", tmp_path)  # the default model: the shipped demo model
    model = StableCodecModel.from_pretrained(command_support.DEFAULT_MODEL).eval()
    reference = model_input(source)
    with torch.no_grad():
        codes = model.encode(reference, posthoc_bottleneck="2x15625_700bps").audio_codes
        num_samples = round(soundfile.info(source).duration * 16000)
        decoded = model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values[0, 0, :num_samples].numpy()
    reference = reference[0, 0, :num_samples].numpy()
    assert f"at {model.bits_per_second('2x15625_700bps'):.1f} bits/s" in result.stdout
    printed = dict(re.findall(r"(\w+) (-?\d+\.\d+)", result.stdout.splitlines()[-1]))
    for name, scorer in functional.SCORERS.items():
        assert float(printed[name]) == pytest.approx(scorer(decoded, reference, 16000), abs=2e-3), name
    written, rate = soundfile.read(tmp_path / f"{source.stem}.wav", dtype="float32")
    np.testing.assert_allclose(written, decoded, atol=1e-5)


def test_evaluate_writes_a_table_as_csv_and_json(tmp_path, speech_files, tiny_model_dir):
    run_cli(
        "evaluate",
        speech_files[0].parent,
        "--model",
        tiny_model_dir,
        "--bottleneck",
        "1x46656_400bps",
        "--csv",
        tmp_path / "metrics.csv",
        "--json",
        tmp_path / "metrics.json",
    )
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [pathlib.Path(row["file"]).name for row in rows] == ["birch.wav", "sheet.flac"]
    assert summary["bottleneck"] == "1x46656_400bps" and summary["model"] == str(tiny_model_dir)
    model = StableCodecModel.from_pretrained(tiny_model_dir).eval()
    assert summary["bits_per_second"] == pytest.approx(model.bits_per_second("1x46656_400bps"))
    for name in functional.SCORERS:
        values = [float(row[name]) for row in rows]
        assert [file[name] for file in summary["files"]] == pytest.approx(values)
        assert summary["mean"][name] == pytest.approx(np.mean(values))


def test_missing_and_unreadable_inputs_are_reported(tmp_path, speech_files):
    missing = run_cli("encode", tmp_path / "nowhere.wav", "-o", tmp_path, expect_success=False)
    assert missing.returncode == 2 and "nowhere.wav: no such file or folder" in missing.stderr
    (tmp_path / "notes.wav").write_text("not audio")
    unreadable = run_cli("reconstruct", tmp_path / "notes.wav", "-o", tmp_path / "out", expect_success=False)
    assert "notes.wav: cannot read it as audio" in unreadable.stderr and "Traceback" not in unreadable.stderr
    clash = run_cli(
        "encode", speech_files[0], tmp_path / "notes.wav", "--bottleneck", "nope", "-o", tmp_path, expect_success=False
    )
    assert clash.returncode == 2 and "invalid choice: 'nope'" in clash.stderr


def test_mismatched_codes_files_are_reported(tmp_path, speech_files, tiny_model_dir):
    run_cli("encode", speech_files[0], "--model", tiny_model_dir, "-o", tmp_path)
    good = tmp_path / f"{speech_files[0].stem}.codes.safetensors"
    with safe_open(good, "pt") as handle:
        metadata, codes = handle.metadata(), handle.get_tensor("audio_codes")

    def variant(name, tensors=None, **changes):
        path = tmp_path / "variants" / f"{name}.codes.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(tensors or {"audio_codes": codes}, path, metadata={**metadata, **changes})
        return path

    half_hop = tmp_path / "half_hop_model"
    StableCodecModel(tiny_config(channel_multipliers=[1, 1], strides=[1, 1])).save_pretrained(half_hop)
    cases = [
        (variant("other_bottleneck", bottleneck="4x729_1000bps"), [], "do not fit the model"),
        (variant("unknown_bottleneck", bottleneck="8x3_bps"), [], "unknown bottleneck '8x3_bps'"),
        (variant("short", num_samples="100"), [], "frames of codes for 100 samples"),
        (variant("foreign", format="something-else"), [], "not a Stable Codec codes file"),
        (variant("out_of_range", {"audio_codes": codes + 15625}), [], "outside the codebook"),
        (good, ["--model", half_hop, "--allow-other-weights"], "hop 320"),
    ]
    for path, options, message in cases:
        result = run_cli("decode", path, *options, "-o", tmp_path / "decoded", expect_success=False)
        assert message in result.stderr, (path.name, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("output", ["wav", "stdout"])
def test_decode_stream_writes_the_decoded_audio(tmp_path, speech_files, tiny_model_dir, output):
    """`decode --stream` gives `decode`'s audio: a float WAV file, or s16le PCM on stdout (rounded to 16 bits)."""
    run_cli("encode", speech_files[0], "--model", tiny_model_dir, "-o", tmp_path / "codes")
    codes_file = tmp_path / "codes" / f"{speech_files[0].stem}.codes.safetensors"
    with safe_open(codes_file, "pt") as handle:
        codes, num_samples = handle.get_tensor("audio_codes"), int(handle.metadata()["num_samples"])
    model = StableCodecModel.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = model.decode(codes[None], posthoc_bottleneck="2x15625_700bps").audio_values[0, 0, :num_samples]
    if output == "wav":
        run_cli("decode", codes_file, "--stream", "-o", tmp_path / "decoded")
        decoded, rate = soundfile.read(tmp_path / "decoded" / f"{speech_files[0].stem}.wav", dtype="float32")
        assert rate == 16000
        np.testing.assert_allclose(decoded, expected.numpy(), rtol=0, atol=1e-5)
    else:
        result = run_cli("decode", codes_file, "--stream", "-o", "-", text=False)
        decoded = np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32767
        assert decoded.shape == (num_samples,)
        np.testing.assert_allclose(decoded, expected.clamp(-1, 1).numpy(), rtol=0, atol=1 / 32767)
