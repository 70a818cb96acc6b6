"""Stand-in for transformers' `tests/utils/test_configuration_utils.py`, which the sdist leaves out. `ConfigTester`
builds a config from `config_common_kwargs` and checks that each of them is kept: the arguments every
`PreTrainedConfig` takes, each with a value other than its default."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "id2label": {0: "silence", 1: "speech"},
    "label2id": {"silence": 0, "speech": 1},
    "problem_type": "regression",
}
