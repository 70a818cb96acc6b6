"""The command line never loses a user's data: inputs are never overwritten, outputs only with --overwrite, batches go
on past bad files, finished work stays on disk, and bad inputs get clear messages (issue #19)."""

import csv
import hashlib
import json
import pathlib
import time

import numpy as np
import pytest
import soundfile
from safetensors import safe_open
from safetensors.torch import save_file

from transformers_stable_codec import cli, command_support

from . import test_cli
from .test_cli import run_cli


# test_cli's module fixtures: real speech files and a saved tiny model.
speech_files, tiny_model_dir = test_cli.speech_files, test_cli.tiny_model_dir


pytestmark = pytest.mark.slow


def codes_metadata(path: pathlib.Path) -> tuple[dict, object]:
    with safe_open(path, "pt") as handle:
        return handle.metadata(), handle.get_tensor("audio_codes")


def leftovers(folder: pathlib.Path) -> list[str]:
    return [path.name for path in folder.rglob("*.partial")]


def test_an_input_is_never_overwritten(tmp_path, speech_files, tiny_model_dir):
    folder = tmp_path / "corpus"
    folder.mkdir()
    source = folder / "birch.wav"
    source.write_bytes(speech_files[0].read_bytes())
    before = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = run_cli("reconstruct", folder, "--model", tiny_model_dir, *extra, "-o", folder, expect_success=False)
        assert result.returncode == 1 and "is an input of this command" in result.stderr
        assert source.read_bytes() == before
    refused = run_cli(
        "evaluate", source, "--model", tiny_model_dir, "--csv", source, "--overwrite", expect_success=False
    )
    assert refused.returncode == 2 and "is an input" in refused.stderr and source.read_bytes() == before


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, speech_files, tiny_model_dir):
    out = tmp_path / "codes"
    run_cli("encode", *speech_files, "--model", tiny_model_dir, "-o", out)
    target = out / "birch.codes.safetensors"
    target.write_bytes(b"the user's own file")
    again = run_cli("encode", *speech_files, "--model", tiny_model_dir, "-o", out)  # a resumed batch: status 0
    assert "skipped:" in again.stderr and "2 skipped" in again.stderr
    assert target.read_bytes() == b"the user's own file"
    run_cli("encode", *speech_files, "--model", tiny_model_dir, "--overwrite", "-o", out)
    assert codes_metadata(target)[0]["format"] == cli.CODES_FORMAT
    assert leftovers(out) == []
    # The output folder inside the input folder: earlier outputs are not taken as inputs.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "birch.wav").write_bytes(speech_files[0].read_bytes())
    for _ in range(2):
        result = run_cli("reconstruct", corpus, "--model", tiny_model_dir, "-o", corpus / "out")
    assert "0 done, 1 skipped" in result.stderr and not (corpus / "out" / "out").exists()


def test_a_batch_goes_on_past_bad_files(tmp_path, speech_files, tiny_model_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a_good.wav").write_bytes(speech_files[0].read_bytes())
    (corpus / "b_bad.wav").write_text("not audio")
    (corpus / "c_good.flac").write_bytes(speech_files[1].read_bytes())
    result = run_cli(
        "evaluate",
        corpus,
        "--model",
        tiny_model_dir,
        "--csv",
        tmp_path / "m.csv",
        "--json",
        tmp_path / "m.json",
        expect_success=False,
    )
    assert result.returncode == 1 and "2 done, 1 failed" in result.stderr
    with open(tmp_path / "m.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(pathlib.Path(row["file"]).name, row["status"]) for row in rows] == [
        ("a_good.wav", "ok"),
        ("b_bad.wav", "error"),
        ("c_good.flac", "ok"),
    ]
    assert "cannot read it as audio" in rows[1]["message"] and float(rows[2]["stoi"]) > 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["complete"] and summary["counts"] == {"ok": 2, "error": 1, "total": 3}
    assert summary["mean"]["stoi"] == pytest.approx(np.mean([float(rows[0]["stoi"]), float(rows[2]["stoi"])]))
    assert not (tmp_path / "m.csv.partial").exists()
    # The same folder through reconstruct: the file after the bad one is written.
    result = run_cli("reconstruct", corpus, "--model", tiny_model_dir, "-o", tmp_path / "out", expect_success=False)
    assert result.returncode == 1 and (tmp_path / "out" / "c_good.wav").is_file()
    # Reports are not overwritten unless asked: the command stops before any work.
    exists = run_cli("evaluate", corpus, "--model", tiny_model_dir, "--csv", tmp_path / "m.csv", expect_success=False)
    assert exists.returncode == 2 and "--overwrite" in exists.stderr


def test_an_interrupted_evaluation_keeps_the_finished_rows(tmp_path, speech_files, tiny_model_dir, monkeypatch):
    calls = []
    real = cli.reconstruct

    def interrupted_on_the_second_file(*arguments):
        calls.append(arguments)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*arguments)

    monkeypatch.setattr(cli, "reconstruct", interrupted_on_the_second_file)
    status = cli.main(
        [
            "evaluate",
            *map(str, speech_files),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--csv",
            str(tmp_path / "m.csv"),
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    assert status == cli.EXIT_INTERRUPTED
    with open(tmp_path / "m.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok"]
    summary = json.loads((tmp_path / "m.json").read_text())
    assert not summary["complete"] and len(summary["files"]) == 1 and summary["counts"]["total"] == 2


def test_truncated_and_tiny_audio_get_clear_messages(tmp_path, speech_files, tiny_model_dir):
    whole = speech_files[0].read_bytes()
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(whole[: len(whole) // 8])  # the header still declares the whole length
    assert soundfile.info(truncated).frames < soundfile.info(speech_files[0]).frames  # libsndfile does not notice
    result = run_cli("encode", truncated, "--model", tiny_model_dir, "-o", tmp_path / "codes", expect_success=False)
    assert result.returncode == 1 and "truncated.wav: truncated or corrupt: its header declares" in result.stderr
    assert not (tmp_path / "codes" / "truncated.codes.safetensors").exists()

    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, 0.1 * np.sin(np.arange(160) / 5), 16000)  # 0.01 s
    result = run_cli("reconstruct", tiny, "--model", tiny_model_dir, "-o", tmp_path / "out")
    assert "too short for the metrics (0.010 s" in result.stderr and "RuntimeWarning" not in result.stderr
    assert (tmp_path / "out" / "tiny.wav").is_file()
    run_cli("evaluate", tiny, "--model", tiny_model_dir, "--csv", tmp_path / "tiny.csv")
    with open(tmp_path / "tiny.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert row["status"] == "ok" and "too short" in row["message"] and row["stoi"] == row["si_sdr"] == ""


def test_codes_name_the_model_portably_and_decoding_checks_its_weights(tmp_path, speech_files, tiny_model_dir):
    source = speech_files[0]
    run_cli("encode", source, "-o", tmp_path / "codes")  # the demo model
    codes_path = tmp_path / "codes" / "birch.codes.safetensors"
    metadata, codes = codes_metadata(codes_path)
    demo_weights = (command_support.DEFAULT_MODEL / "model.safetensors").read_bytes()
    assert metadata["model"] == "demo" and metadata["model_sha256"] == hashlib.sha256(demo_weights).hexdigest()

    other = run_cli("decode", codes_path, "--model", tiny_model_dir, "-o", tmp_path / "a", expect_success=False)
    assert other.returncode == 1 and "other weights" in other.stderr and "--allow-other-weights" in other.stderr
    forced = run_cli("decode", codes_path, "--model", tiny_model_dir, "--allow-other-weights", "-o", tmp_path / "b")
    assert "decoding anyway" in forced.stderr and (tmp_path / "b" / "birch.wav").is_file()

    # A codes file of an earlier version: the demo model by an absolute path in another environment, no hash.
    old = {key: value for key, value in metadata.items() if key != "model_sha256"}
    old["model"] = "/elsewhere/.venv/lib/python3.11/site-packages/transformers_stable_codec/demo_model"
    old_path = tmp_path / "old" / "birch.codes.safetensors"
    old_path.parent.mkdir()
    save_file({"audio_codes": codes}, old_path, metadata=old)
    result = run_cli("decode", old_path, "-o", tmp_path / "c")
    assert "records no model_sha256" in result.stderr and (tmp_path / "c" / "birch.wav").is_file()
    expected, _ = soundfile.read(tmp_path / "b" / "birch.wav")
    assert soundfile.read(tmp_path / "c" / "birch.wav")[0].shape == expected.shape

    for field, value in (("num_samples", "1e5"), ("num_samples", "-3"), ("hop_length", "abc")):
        bad = tmp_path / "bad" / f"{field}{value}.codes.safetensors"
        bad.parent.mkdir(exist_ok=True)
        save_file({"audio_codes": codes}, bad, metadata={**metadata, field: value})
        result = run_cli("decode", bad, "-o", tmp_path / "d", expect_success=False)
        assert f"{bad}: the metadata field {field!r} must be a positive integer, got {value!r}" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_hub_id_without_network_fails_fast(tmp_path, speech_files, monkeypatch):
    # Nothing listens on port 9 of this machine: the Hub is unreachable whatever the machine's network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.monotonic()
    result = run_cli(
        "encode",
        speech_files[0],
        "--model",
        "stabilityai/stable-codec-speech-16k",
        "-o",
        tmp_path,
        expect_success=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and "cannot be reached" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    assert elapsed < 30, elapsed  # huggingface_hub alone retries for minutes
