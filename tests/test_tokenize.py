"""The corpus tokenizer (`stable-codec tokenize`, `accelerate launch -m transformers_stable_codec.tokenize`) on a
real espeak-ng corpus of mixed rates, channel counts and formats with a broken file: one process, two processes,
a kill and a restart, against each clip encoded alone."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from datasets import load_dataset

from transformers_stable_codec import StableCodecFeatureExtractor, StableCodecModel

from .conftest import accelerate_cpu_launch, randomize_, synthesize_speech, tiny_config


pytestmark = pytest.mark.slow
SENTENCES = [
    ("a/birch.wav", "The birch canoe slid on the smooth planks.", 22050, 1),
    ("a/sheet.flac", "Glue the sheet to the dark blue background.", 44100, 2),
    ("b/depth.wav", "It is easy to tell the depth of a well.", 16000, 1),
    ("b/c/chicken.flac", "These days a chicken leg is a rare dish.", 8000, 1),
    ("rice.wav", "Rice is often served in round bowls.", 48000, 2),
    ("juice.wav", "The juice of lemons makes fine punch.", 24000, 1),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text, rate, channels in SENTENCES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        synthesize_speech(folder / name, text, rate, channels=channels)
    (folder / "b" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (folder / "notes.txt").write_text("not audio: ignored")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("model")
    randomize_(StableCodecModel(tiny_config()), seed=3).save_pretrained(folder)
    return folder


def tokenize(corpus, output_dir, model_dir, *options, processes: int = 1, wait: bool = True):
    arguments = [
        str(corpus),
        "--output-dir",
        str(output_dir),
        "--model",
        str(model_dir),
        "--num-workers",
        "1",
        "--window-clips",
        "2",
        "--bottleneck",
        "2x15625_700bps",
        "--cpu",
        *options,
    ]
    if processes == 1:  # through the console script's module, as `stable-codec tokenize`
        command = [sys.executable, "-m", "transformers_stable_codec.cli", "tokenize", *arguments]
    else:
        command = accelerate_cpu_launch(processes, "no", "transformers_stable_codec.tokenize", *arguments)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    if not wait:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def rows_by_id(output_dir) -> dict:
    rows = load_dataset("parquet", data_dir=str(output_dir), split="train")
    ids = rows["id"]
    assert len(ids) == len(set(ids)), "a clip was written twice"
    return {row["id"]: row for row in rows}


@pytest.fixture(scope="module")
def one_process(corpus, model_dir, tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("tokens-1")
    result = tokenize(corpus, output_dir, model_dir)
    assert result.returncode == 1, result.stdout + result.stderr  # 1: a clip failed
    return output_dir


def encoded_alone(model, path) -> torch.Tensor:
    """The codes of the file's frames, the file encoded alone."""
    extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    features = extractor(audio.T, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        alone = model.encode(**features, posthoc_bottleneck="2x15625_700bps")
    return alone.audio_codes[0, :, : int(alone.audio_codes_mask.sum())]


def test_every_clip_gets_the_codes_it_gets_alone(one_process, corpus, model_dir):
    rows = rows_by_id(one_process)
    assert sorted(rows) == sorted(name for name, *_ in SENTENCES)
    model = StableCodecModel.from_pretrained(model_dir).eval()
    for name, *_ in SENTENCES:
        alone = encoded_alone(model, corpus / name)
        row = rows[name]
        duration = soundfile.info(corpus / name).frames / soundfile.info(corpus / name).samplerate
        assert row["num_frames"] == alone.shape[-1] and row["duration_s"] == pytest.approx(duration)
        assert torch.equal(torch.tensor(row["audio_codes"]), alone), name
    # The codes decode with the model that made them.
    codes = torch.tensor(rows["rice.wav"]["audio_codes"])[None]
    audio = model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
    assert audio.shape[-1] == codes.shape[-1] * model.hop_length


def test_the_manifest_counts_everything_and_names_the_failure(one_process, model_dir):
    manifest = json.loads((one_process / "manifest.json").read_text())
    assert (manifest["clips"], manifest["failed"], manifest["world_size"]) == (len(SENTENCES), 1, 1)
    assert (
        manifest["failures"][0]["id"] == "b/broken.wav"
        and "cannot read it as audio" in manifest["failures"][0]["reason"]
    )
    rows = rows_by_id(one_process)
    assert manifest["frames"] == sum(row["num_frames"] for row in rows.values())
    assert manifest["audio_hours"] == pytest.approx(sum(row["duration_s"] for row in rows.values()) / 3600)
    assert manifest["model_sha256"] and manifest["hop_length"] == 640 and manifest["frame_rate"] == 25.0
    assert manifest["bottleneck"] == "2x15625_700bps" and manifest["codebook_sizes"] == [15625, 15625]
    # 7 clips (the broken one included) in windows of 2: 4 shards, and a journal per window.
    assert manifest["shards"] == 4 == len(list(one_process.glob("train-*.parquet")))
    assert len(list((one_process / "windows").glob("*.json"))) == 4


def test_two_processes_give_the_same_rows(one_process, corpus, model_dir, tmp_path):
    result = tokenize(corpus, tmp_path, model_dir, processes=2)
    assert result.returncode == 1, result.stdout + result.stderr
    assert rows_by_id(tmp_path) == rows_by_id(one_process)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["world_size"], manifest["failed"], len(manifest["processes"])) == (2, 1, 2)


def kill_after_two_windows(process, output_dir) -> None:
    """SIGKILL to the run (all its processes) once it has written two windows, then the output cut back to what a
    kill at that point leaves, whenever the kill landed (a fast run may have written every window first): the first
    two windows' journals and shards, no later window, no statistics, no manifest."""
    deadline = time.monotonic() + 300
    while len(list(output_dir.glob("windows/*.json"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for journal in sorted(output_dir.glob("windows/*.json"))[2:]:
        journal.unlink()
        (output_dir / f"train-{journal.stem}.parquet").unlink(missing_ok=True)
    for path in [output_dir / "manifest.json", *output_dir.glob("stats/*.json")]:
        path.unlink(missing_ok=True)


def test_a_killed_run_resumes_without_losing_or_repeating_a_clip(one_process, corpus, model_dir, tmp_path):
    kill_after_two_windows(tokenize(corpus, tmp_path, model_dir, "--window-clips", "1", wait=False), tmp_path)
    written = len(list(tmp_path.glob("windows/*.json")))
    assert 2 <= written < len(SENTENCES) + 1 and not (tmp_path / "manifest.json").exists()
    result = tokenize(corpus, tmp_path, model_dir, "--window-clips", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert rows_by_id(tmp_path) == rows_by_id(one_process)
    assert json.loads((tmp_path / "manifest.json").read_text())["failed"] == 1


def test_other_settings_on_an_earlier_run_and_the_input_as_output_are_refused(one_process, corpus, model_dir):
    result = tokenize(corpus, one_process, model_dir, "--window-clips", "3")
    assert result.returncode == 2 and "window_clips: 2 there, 3 now" in result.stderr
    result = tokenize(corpus, corpus, model_dir)
    assert result.returncode == 2 and "must not be INPUT" in result.stderr


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_a_datasets_corpus_gives_the_rows_of_its_files(one_process, corpus, model_dir, tmp_path, layout):
    from datasets import Audio, Dataset

    names = [name for name, *_ in SENTENCES]
    dataset = Dataset.from_dict({"path": names, "audio": [str(corpus / name) for name in names]})
    dataset = dataset.cast_column("audio", Audio())
    if layout == "save_to_disk":
        dataset.save_to_disk(tmp_path / "dataset")
    else:
        (tmp_path / "dataset").mkdir()
        dataset.to_parquet(tmp_path / "dataset" / "clips.parquet")  # the audio bytes are embedded
    result = tokenize(tmp_path / "dataset", tmp_path / "tokens", model_dir, "--id-column", "path")
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_by_id(tmp_path / "tokens") == {name: row for name, row in rows_by_id(one_process).items()}


def test_a_missing_extra_is_named_with_the_install_command(corpus, model_dir, tmp_path, monkeypatch, capsys):
    from transformers_stable_codec import tokenize as corpus_tokenizer

    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if it were not installed: importing it fails
    status = corpus_tokenizer.main([str(corpus), "--output-dir", str(tmp_path / "out"), "--model", str(model_dir)])
    assert status == 2 and "transformers-stable-codec[tokenize]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fixed_shape_batches_filled_up_with_silence_give_each_clip_its_codes_alone(corpus, model_dir):
    """What `--compile` runs: batches of one padded length hold a fixed number of rows, the missing ones silent, and
    batch k + 1 is launched before batch k's codes are collected."""
    from transformers_stable_codec.tokenize import Batcher, Clip, Tokenizer

    model = StableCodecModel.from_pretrained(model_dir).eval()
    extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    clips = []
    for window, (name, *_) in enumerate(SENTENCES):
        audio, rate = soundfile.read(corpus / name, dtype="float32", always_2d=True)
        clips.append(Clip(name, audio.T, rate, window=window // 3))
    batcher = Batcher(model.sampling_rate, model.hop_length, 1.0, 12.0, fixed_shapes=True)  # 4 rows of 3 s
    batches = batcher.add(clips[:3]) + batcher.add(clips[3:]) + batcher.flush()
    assert sorted(clip.id for batch in batches for clip in batch.clips) == sorted(clip.id for clip in clips)
    assert any(batch.rows > len(batch.clips) for batch in batches)  # some batches are filled up
    tokenizer = Tokenizer(model, extractor, "2x15625_700bps")
    rows, launched = {}, None
    for batch in batches:
        prepared = tokenizer.prepare(batch)
        assert prepared.input_values.shape == (batcher.rows(batch.length), 1, batch.length)
        queued = tokenizer.launch(prepared)
        if launched is not None:
            rows.update((clip.id, codes) for clip, codes in tokenizer.finish(launched))
        launched = queued
    rows.update((clip.id, codes) for clip, codes in tokenizer.finish(launched))
    for name, *_ in SENTENCES:
        assert torch.equal(torch.from_numpy(rows[name]), encoded_alone(model, corpus / name)), name


def test_compiling_turns_on_inductors_deterministic_mode_unless_the_environment_chose(monkeypatch):
    """Inductor's timed kernel choice made two H200 runs differ in a few tokens per clip (docs/tokenize.md): a compiled
    tokenizer chooses without timing, and an explicit TORCHINDUCTOR_DETERMINISTIC is the user's to keep."""
    import torch._inductor.config as inductor_config

    from transformers_stable_codec.tokenize import Tokenizer

    model = StableCodecModel(tiny_config()).eval()
    monkeypatch.delenv("TORCHINDUCTOR_DETERMINISTIC", raising=False)
    monkeypatch.setattr(inductor_config, "deterministic", False)
    Tokenizer(model, None, None)
    assert inductor_config.deterministic is False  # eager: nothing to choose
    Tokenizer(model, None, None, compile_mode="default")
    assert inductor_config.deterministic is True
    monkeypatch.setattr(inductor_config, "deterministic", False)
    monkeypatch.setenv("TORCHINDUCTOR_DETERMINISTIC", "0")
    Tokenizer(model, None, None, compile_mode="default")
    assert inductor_config.deterministic is False


def test_a_batch_waits_for_the_next_window_only():
    from transformers_stable_codec.tokenize import Batcher, Clip

    def clip(name, samples, window, rate=16000):
        return Clip(name, np.zeros((1, samples), np.float32), rate, window=window)

    batcher = Batcher(16000, 640, 1.0, 3.0, fixed_shapes=False)  # 3 clips of 1 s per batch
    clips = [clip(f"{window}-{index}", 16000, window) for window in (0, 1, 2) for index in range(2)]
    assert batcher.add(clips[:2]) == []  # 2 of 3: waits
    (full,) = batcher.add(clips[2:4])  # window 1 completes window 0's batch; its second clip waits
    assert [clip.id for clip in full.clips] == ["0-0", "0-1", "1-0"]
    batches = batcher.add(clips[4:])  # window 2 joins window 1's clip, a full batch
    assert [[clip.id for clip in batch.clips] for batch in batches] == [["1-1", "2-0", "2-1"]]
    assert batcher.flush() == []

    batcher = Batcher(16000, 640, 1.0, 6.0, fixed_shapes=False)  # 6 clips of 1 s, or 3 of 2 s
    assert batcher.add([clip("a", 16000, 0)]) == []
    (leftover,) = batcher.add([clip("b", 16000, 1), clip("long", 30000, 1)])  # window 0's clip waits no longer
    assert [clip.id for clip in leftover.clips] == ["a", "b"] and leftover.rows == 2  # not filled up: not compiled
    (late,) = batcher.add([clip("short", 160, 2, rate=8000)])  # nor window 1's long clip
    assert [clip.id for clip in late.clips] == ["long"] and (late.length, late.lengths) == (32000, [30000])
    (last,) = batcher.flush()
    assert [clip.id for clip in last.clips] == ["short"] and (last.length, last.lengths) == (16000, [320])


def test_clips_the_extractor_would_refuse_are_failures_not_crashes(tmp_path):
    from transformers_stable_codec.tokenize import FolderSource, ShareOfClips

    soundfile.write(tmp_path / "slow.wav", np.zeros(800, np.float32), 800)
    soundfile.write(tmp_path / "wide.wav", np.zeros((2, 3), np.float32), 16000)
    soundfile.write(tmp_path / "fine.wav", np.zeros(1600, np.float32), 16000)
    soundfile.write(tmp_path / "void.wav", np.zeros(0, np.float32), 16000)
    clips = ShareOfClips(FolderSource(tmp_path), [0, 1, 2, 3])
    assert [clip.id for clip in clips] == ["fine.wav", "slow.wav", "void.wav", "wide.wav"]
    assert clips[0].error is None
    assert "800 Hz is outside the supported range of 1000 to 384000 Hz" in clips[1].error
    assert "no samples" in clips[2].error
    assert "shape (3, 2): more channels than samples" in clips[3].error


def test_a_dataset_clip_with_nan_samples_is_a_failure_of_its_own():
    from transformers_stable_codec.tokenize import Clip, checked

    samples = np.zeros((1, 1600), np.float32)
    samples[0, 7] = np.nan
    assert "NaN or infinite samples" in checked(Clip("bad", samples, 16000)).error
    assert checked(Clip("good", np.zeros((1, 1600), np.float32), 16000)).error is None


def test_an_audio_folder_needs_no_datasets(corpus, model_dir, tmp_path):
    code = (
        "import sys; sys.modules['datasets'] = None  # as if it were not installed\n"
        "from transformers_stable_codec.tokenize import main; sys.exit(main(sys.argv[1:]))"
    )
    arguments = [str(corpus), "--output-dir", str(tmp_path), "--model", str(model_dir), "--cpu", "--num-workers", "0"]
    result = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # 1: the broken file
    assert json.loads((tmp_path / "manifest.json").read_text())["clips"] == len(SENTENCES)


def test_a_streamed_dataset_gives_the_rows_of_its_files_and_resumes_after_a_kill(
    one_process, corpus, model_dir, tmp_path
):
    from datasets import Audio, Dataset

    names = [name for name, *_ in SENTENCES]
    dataset = Dataset.from_dict({"path": names, "audio": [str(corpus / name) for name in names]})
    dataset = dataset.cast_column("audio", Audio())
    (tmp_path / "dataset").mkdir()
    for number, start in enumerate((0, 3)):  # two files: two shards of the stream, one per worker
        dataset.select(range(start, start + 3)).to_parquet(tmp_path / "dataset" / f"clips-{number}.parquet")
    options = ["--streaming", "--id-column", "path", "--num-workers", "2"]
    expected = rows_by_id(one_process)

    result = tokenize(tmp_path / "dataset", tmp_path / "whole", model_dir, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_by_id(tmp_path / "whole") == expected
    result = tokenize(tmp_path / "dataset", tmp_path / "two", model_dir, *options, processes=2)  # a shard each
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_by_id(tmp_path / "two") == expected

    process = tokenize(
        tmp_path / "dataset", tmp_path / "killed", model_dir, *options, "--window-clips", "1", wait=False
    )
    kill_after_two_windows(process, tmp_path / "killed")
    assert len(list(tmp_path.glob("killed/windows/*.json"))) == 2 and len(list(tmp_path.glob("killed/*.parquet"))) == 2
    # The stream's order depends on the workers: resuming with others is refused.
    result = tokenize(
        tmp_path / "dataset", tmp_path / "killed", model_dir, *options, "--window-clips", "1", "--num-workers", "1"
    )
    assert result.returncode == 2 and "streamed_by_workers: 2 there, 1 now" in result.stderr
    result = tokenize(tmp_path / "dataset", tmp_path / "killed", model_dir, *options, "--window-clips", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert rows_by_id(tmp_path / "killed") == expected
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["clips"] == len(SENTENCES)


def test_streaming_needs_a_dataset_and_an_id_column(corpus, model_dir, tmp_path):
    result = tokenize(corpus, tmp_path / "folder", model_dir, "--streaming")
    assert result.returncode == 2 and "--streaming is for datasets" in result.stderr
    from datasets import Audio, Dataset

    dataset = Dataset.from_dict({"audio": [str(corpus / SENTENCES[0][0])]}).cast_column("audio", Audio())
    dataset.to_parquet(tmp_path / "clips.parquet")
    result = tokenize(tmp_path / "clips.parquet", tmp_path / "tokens", model_dir, "--streaming")
    assert result.returncode == 2 and "--streaming needs --id-column" in result.stderr
