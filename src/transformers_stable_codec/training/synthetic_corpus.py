"""A force-aligned speech corpus made with espeak-ng, for proving the training pipeline without real data.

Each word is synthesized on its own (several voices, rates and pitches), trimmed of silence, and words are joined
with short random pauses into sentences of random words, so every word's start and end are known to the sample.
The corpus is written as WebDataset-style tar shards (`KEY.flac` + `KEY.json` holding `text` and
`force_aligned_text` in the original's format) and/or as a `datasets` dataset (`save_to_disk`), split into
`train` and `validation` (sentences that never occur in training).

    python -m transformers_stable_codec.training.synthetic_corpus outputs/demo_corpus --train 800 --validation 64
    python -m transformers_stable_codec.training.synthetic_corpus outputs/demo_corpus2 --speakers many \\
        --train 8000 --validation 96 --workers 16
"""

import argparse
import io
import json
import math
import pathlib
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile
from scipy.signal import resample_poly


# Everyday words, all in the CMU Pronouncing Dictionary.
VOCABULARY = """
a about after again air all almost also always and animal another answer any are around as ask at away back
be because been before began begin being below best better between big black blue boat body book both boy bring
brother build but by call came can car carry cat change children city close cold color come could country cut
day did different do does dog done door down draw during each early earth eat end enough even evening every
eye face fall family far farm fast father feel few field find fire first fish five follow food foot for form
found four friend from full game gave girl give go gold good got great green ground group grow had half hand happy
hard has have he head hear heard help her here high hill him his hold home horse hot hour house how idea if in
into is it just keep kind king know land large last late laugh learn leave left let letter life light like line
listen little live long look love low made make man many map may me mean men might mile mind money moon more morning
most mother mountain move much music must my name near need never new next night no north nothing now number of off
often old on once one only open or other our out over own page paper part people picture place plant play point
press pull put question quick quiet rain ran read ready red river road rock room round run said same saw say school
sea second see seem sentence set she ship short should show side simple sing sister sit six sleep slow small snow so
some song soon sound south space speak special spring stand star start stay still stone stop story street strong
study such summer sun table take talk teacher tell ten than that the their them then there these they thing think
this those thought three through time to today together told too took top toward town tree true try turn two under
until up us use very voice walk wall want warm was watch water way we week well went were west what when where which
while white who whole why wide will wind window winter with without woman wood word work world would write year yes
yet you young
""".split()

# (espeak-ng voice, words per minute, pitch 0-99): the corpus's speakers.
VOICES = [
    ("en-us", 150, 50),
    ("en-us+m3", 140, 40),
    ("en-us+f2", 155, 60),
    ("en-gb", 145, 45),
    ("en-gb+m7", 135, 35),
    ("en-us+f4", 160, 70),
    ("en-us+m1", 150, 30),
    ("en-gb+f3", 140, 65),
]

# The larger speaker set of the demo's second run: espeak-ng's English accents crossed with its voice variants (the
# robotic, whispering and croaking variants left out), each speaker with its own rate and pitch. The held-out variants
# occur in no corpus: scripts/evaluate_demo.py measures with them how a model does on voices it never heard.
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-029", "en-us-nyc"]
TRAIN_VARIANTS = """
m1 m2 m3 m4 m6 m7 m8 f1 f2 f3 f4 klatt klatt2 klatt3 klatt6 Alex Andy adam anika aunty belinda benjamin boris caleb
ed edward grandma grandpa iven john max michel paul pedro quincy rob robert shelby travis victor
""".split()
HELDOUT_VARIANTS = "m5 f5 klatt4 Annie david linda norbert steph".split()


def many_speakers() -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(training speakers, held-out speakers): the 8 original voices plus each training variant in two accents; each
    held-out variant in one accent. Rates and pitches come from a fixed generator, so the set never changes."""
    rng = np.random.default_rng(20261201)

    def speaker(accent, variant):
        return (f"{accent}+{variant}", int(rng.integers(130, 176)), int(rng.integers(25, 76)))

    train = list(VOICES)
    for index, variant in enumerate(TRAIN_VARIANTS):
        train += [speaker(ACCENTS[index % 8], variant), speaker(ACCENTS[(index + 3) % 8], variant)]
    heldout = [speaker(ACCENTS[(3 * index + 1) % 8], variant) for index, variant in enumerate(HELDOUT_VARIANTS)]
    return train, heldout


SPEAKER_SETS = {"demo8": lambda: list(VOICES), "many": lambda: many_speakers()[0]}

SAMPLING_RATE = 16000


def synthesize_word(word: str, voice: tuple[str, int, int], sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """One word spoken by espeak-ng, resampled, with the leading and trailing silence trimmed."""
    name, rate, pitch = voice
    try:
        wav = subprocess.run(
            ["espeak-ng", "-v", name, "-s", str(rate), "-p", str(pitch), "--stdout", word],
            check=True,
            capture_output=True,
        ).stdout
    except FileNotFoundError:
        raise RuntimeError(
            "espeak-ng is not installed (apt-get install espeak-ng, or put the folder of "
            "scripts/prepare_espeak_carry.sh first on PATH)."
        ) from None
    audio, source_rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    divisor = math.gcd(source_rate, sampling_rate)
    audio = resample_poly(audio, sampling_rate // divisor, source_rate // divisor).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    if len(loud) == 0:
        raise RuntimeError(f"espeak-ng produced silence for {word!r} with voice {voice}.")
    margin = int(0.005 * sampling_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def make_sentences(
    count: int, rng: np.random.Generator, exclude: set, min_words: int, max_words: int
) -> list[tuple[str, ...]]:
    sentences = []
    while len(sentences) < count:
        length = int(rng.integers(min_words, max_words + 1))
        sentence = tuple(str(word) for word in rng.choice(VOCABULARY, size=length))
        if sentence not in exclude:
            exclude.add(sentence)
            sentences.append(sentence)
    return sentences


def assemble(
    words: tuple[str, ...], bank: dict, voice: tuple[str, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Joins a voice's words with random pauses; returns the audio and the exact word timings (seconds)."""
    pieces, transcript, position = [], [], 0

    def pause(low, high):
        nonlocal position
        samples = int(rng.uniform(low, high) * SAMPLING_RATE)
        pieces.append(np.zeros(samples, dtype=np.float32))
        position += samples

    pause(0.05, 0.25)
    for index, word in enumerate(words):
        if index:
            pause(0.02, 0.15)
        audio = bank[word, voice]
        transcript.append(
            {
                "word": word,
                "start": round(position / SAMPLING_RATE, 5),
                "end": round((position + len(audio)) / SAMPLING_RATE, 5),
            }
        )
        pieces.append(audio)
        position += len(audio)
    pause(0.05, 0.25)
    return np.concatenate(pieces), transcript


def build_corpus(
    folder,
    train: int,
    validation: int,
    seed: int = 0,
    formats=("shards", "hf"),
    shard_size: int = 200,
    min_words: int = 3,
    max_words: int = 7,
    voices: list[tuple[str, int, int]] = tuple(VOICES),
    workers: int = 2,
) -> dict:
    """Writes the corpus under `folder` (`train-*.tar`, `validation-*.tar`, and/or `hf/`); returns a summary.
    `voices`: the (espeak-ng voice, words per minute, pitch) speakers, one drawn at random for each sentence."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seen: set = set()
    splits = {"validation": make_sentences(validation, rng, seen, min_words, max_words)}
    splits["train"] = make_sentences(train, rng, seen, min_words, max_words)
    speakers = {name: rng.integers(0, len(voices), size=len(sentences)) for name, sentences in splits.items()}

    needed = sorted(
        {
            (word, voices[int(voice)])
            for name in splits
            for sentence, voice in zip(splits[name], speakers[name])
            for word in sentence
        }
    )
    with ThreadPoolExecutor(workers) as pool:  # espeak-ng runs as subprocesses: threads suffice
        bank = dict(zip(needed, pool.map(lambda key: synthesize_word(*key), needed)))

    summary = {"sampling_rate": SAMPLING_RATE, "voices": [list(voice) for voice in voices], "splits": {}}
    for name, sentences in splits.items():
        rows = []
        for index, (sentence, voice) in enumerate(zip(sentences, speakers[name])):
            speaker = voices[int(voice)]
            audio, transcript = assemble(sentence, bank, speaker, rng)
            buffer = io.BytesIO()
            soundfile.write(buffer, audio, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
            metadata = {
                "text": " ".join(sentence),
                "voice": speaker[0],
                "force_aligned_text": {"transcript": transcript},
            }
            rows.append((f"{name}_{index:06d}", buffer.getvalue(), metadata, len(audio)))
        if "shards" in formats:
            for shard, start in enumerate(range(0, len(rows), shard_size)):
                with tarfile.open(folder / f"{name}-{shard:06d}.tar", "w") as archive:
                    for key, flac, metadata, _ in rows[start : start + shard_size]:
                        for member, payload in ((f"{key}.flac", flac), (f"{key}.json", json.dumps(metadata).encode())):
                            info = tarfile.TarInfo(member)
                            info.size = len(payload)
                            archive.addfile(info, io.BytesIO(payload))
        if "hf" in formats:
            import datasets

            features = datasets.Features(
                {
                    "audio": datasets.Audio(sampling_rate=SAMPLING_RATE, decode=False),
                    "text": datasets.Value("string"),
                    "force_aligned_text": {
                        "transcript": datasets.List(
                            {
                                "word": datasets.Value("string"),
                                "start": datasets.Value("float64"),
                                "end": datasets.Value("float64"),
                            }
                        )
                    },
                }
            )
            table = {
                "audio": [{"bytes": flac, "path": f"{key}.flac"} for key, flac, _, _ in rows],
                "text": [metadata["text"] for _, _, metadata, _ in rows],
                "force_aligned_text": [metadata["force_aligned_text"] for _, _, metadata, _ in rows],
            }
            datasets.Dataset.from_dict(table, features=features).save_to_disk(str(folder / "hf" / name))
        seconds = sum(length for *_, length in rows) / SAMPLING_RATE
        summary["splits"][name] = {"clips": len(rows), "seconds": round(seconds, 1)}
    (folder / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--train", type=int, default=800, help="training sentences")
    parser.add_argument("--validation", type=int, default=64, help="held-out sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["shards", "hf", "both"], default="both")
    parser.add_argument("--min_words", type=int, default=3)
    parser.add_argument("--max_words", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once")
    parser.add_argument(
        "--speakers",
        choices=sorted(SPEAKER_SETS),
        default="demo8",
        help="demo8: the first demo's 8 voices; many: those and 80 accent-and-variant speakers (8 more, held out of "
        "every corpus, are for scripts/evaluate_demo.py)",
    )
    args = parser.parse_args(argv)
    formats = ("shards", "hf") if args.format == "both" else (args.format,)
    voices = SPEAKER_SETS[args.speakers]()
    summary = build_corpus(
        args.folder,
        args.train,
        args.validation,
        args.seed,
        formats,
        min_words=args.min_words,
        max_words=args.max_words,
        voices=voices,
        workers=args.workers,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
