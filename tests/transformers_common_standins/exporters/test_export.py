"""Stand-in for transformers' `tests/exporters/test_export.py`, which the sdist leaves out. `ModelTesterMixin` derives
from its `ExportTesterMixin`; ours keeps the part that applies to an audio codec: `torch.export` of `forward` gives
the eager outputs (skipped where a tester sets `test_torch_exportable = False`)."""

import torch


class ExportTesterMixin:
    def test_torch_export(self):
        if not self.test_torch_exportable:
            self.skipTest("test_torch_exportable = False")
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            with torch.no_grad():
                exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                expected = model(**inputs)
                actual = exported.module()(**inputs)
            for name, value in expected.items():
                torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-5, msg=name)
