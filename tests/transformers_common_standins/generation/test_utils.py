"""Stand-in for transformers' `tests/generation/test_utils.py`, which the sdist leaves out. The common tests import its
`GenerationTesterMixin` only to check that models that can generate inherit it; Stable Codec does not generate."""


class GenerationTesterMixin:
    pass
