"""transformers' common model tests (`ModelTesterMixin`) and config tests (`ConfigTester`) on a tiny
`StableCodecModel`, as transformers tests its own codecs (`tests/models/mimi/test_modeling_mimi.py`). The common tests
come from the source distribution of the installed transformers (`transformers_common.py`)."""

import inspect
import os
import subprocess
import unittest

import pytest
import torch
import transformers

from transformers_stable_codec import StableCodecConfig, StableCodecModel

from .transformers_common import import_transformers_tests


try:
    test_modeling_common, test_configuration_common = import_transformers_tests()
except subprocess.CalledProcessError:
    if os.environ.get("CI"):  # CI reaches PyPI: a failure there is a failure
        raise
    pytest.skip(
        f"transformers {transformers.__version__}'s source distribution could not be fetched (offline?); its common "
        "tests come from there.",
        allow_module_level=True,
    )


class StableCodecModelTester:
    def __init__(self, parent, batch_size=3, num_frames=12, is_training=False):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.is_training = is_training

    def get_config(self) -> StableCodecConfig:
        # Two stages (stride 1, then 2), windows narrower than the sequence: small, with every part in play.
        return StableCodecConfig(
            patch_size=16,
            hidden_size=32,
            head_dim=32,
            channel_multipliers=[1, 2],
            strides=[1, 2],
            transformer_depths=[1, 1],
            attention_window_left=2,
            attention_window_right=3,
            ff_mult=2,
            latent_dim=4,
            fsq_levels=[5, 5, 5, 5],
        )

    def prepare_config_and_inputs(self):
        config = self.get_config()
        input_values = test_modeling_common.floats_tensor([self.batch_size, 1, self.num_frames * config.hop_length])
        return config, {"input_values": input_values - 0.5}

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class StableCodecModelTest(test_modeling_common.ModelTesterMixin, unittest.TestCase):
    all_model_classes = (StableCodecModel,)
    is_encoder_decoder = True
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = StableCodecModelTester(self)
        self.config_tester = test_configuration_common.ConfigTester(
            self, config_class=StableCodecConfig, hidden_size=32, common_properties=[], has_text_modality=False
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The model returns neither attention weights nor hidden states (and says so if asked).
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        inputs_dict.pop("output_attentions", None)
        inputs_dict.pop("output_hidden_states", None)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_forward_signature(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            expected = ["input_values", "padding_mask", "posthoc_bottleneck", "chunk_length_s"]
            self.assertListEqual(list(inspect.signature(model.forward).parameters)[: len(expected)], expected)
            expected = ["audio_codes", "audio_codes_mask", "posthoc_bottleneck", "chunk_length_s"]
            self.assertListEqual(list(inspect.signature(model.decode).parameters)[: len(expected)], expected)

    def test_model_forward(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs()
        model = StableCodecModel(config).eval()
        with torch.no_grad():
            output = model(**inputs_dict)
        self.assertEqual(output.audio_values.shape, inputs_dict["input_values"].shape)
        self.assertEqual(output.audio_codes.shape, (self.model_tester.batch_size, 1, self.model_tester.num_frames))

    def test_model_outputs_equivalence(self):
        # As MimiModel's tester: the common version also asks for hidden states, which this model does not return.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            with torch.no_grad():
                as_tuple = model(**inputs, return_dict=False)
                as_dict = model(**inputs, return_dict=True)
            self.assertIsInstance(as_tuple, tuple)
            self.assertEqual(len(as_tuple), len(as_dict))
            for tuple_value, (name, dict_value) in zip(as_tuple, as_dict.items()):
                torch.testing.assert_close(tuple_value, dict_value, rtol=0, atol=0, msg=name)

    @unittest.skip(reason="An audio codec has no `inputs_embeds` (as MimiModel)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="An audio codec has no input embeddings (as MimiModel)")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="The model returns neither attention weights nor hidden states (as MimiModel)")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="The model returns no attention weights (as MimiModel)")
    def test_attention_outputs(self):
        pass

    @unittest.skip(reason="The model returns no hidden states (as MimiModel)")
    def test_hidden_states_output(self):
        pass
