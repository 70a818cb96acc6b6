"""Where a flex-attention stream spends its time on the GPU machine: the GPU test of the exact flex stream
(`tests/test_gpu.py::test_stream_equals_decode_on_gpu[flex_attention]`) did not finish in 120-140 s twice, with no
recompile logged. This runs the same model and codes step by step, printing each stage's and each attention call's
time and dynamo's compile count as it goes, and dumps every thread's stack every 30 s to stderr (faulthandler), so a
call cut short by its time limit still shows where it was.

    python3 scripts/flex_stream_probe.py [--attention flex_attention] [--device cuda]   # ~2 minutes budget
"""

import argparse
import faulthandler
import sys
import time

import torch
from torch._dynamo.utils import counters


sys.path.insert(0, ".")
from tests.conftest import randomize_, tiny_config  # noqa: E402
from tests.model_helpers import speechlike  # noqa: E402
from transformers_stable_codec import modeling_stable_codec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attention", default="flex_attention")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(30, repeat=True)
    began = time.perf_counter()

    def say(message: str) -> None:
        frames = counters["stats"].get("unique_graphs", 0)
        print(f"{time.perf_counter() - began:7.1f} s  [graphs compiled: {frames}]  {message}", flush=True)

    torch.manual_seed(0)
    model = randomize_(
        modeling_stable_codec.StableCodecModel(tiny_config(attention_window_left=3, attention_window_right=4))
    )
    model = model.eval().to(args.device)
    model.set_attn_implementation(args.attention)
    interface = modeling_stable_codec.ALL_ATTENTION_FUNCTIONS.get_interface(args.attention, None)
    calls = [0]

    def timed_attention(module, query, *rest, **kwargs):
        calls[0] += 1
        started = time.perf_counter()
        result = interface(module, query, *rest, **kwargs)
        if query.is_cuda:
            torch.cuda.synchronize()
        say(f"attention call {calls[0]}: query {tuple(query.shape)} in {time.perf_counter() - started:.2f} s")
        return result

    if interface is not None:
        modeling_stable_codec.ALL_ATTENTION_FUNCTIONS[args.attention] = timed_attention
    with torch.no_grad():
        say("encode")
        audio = speechlike(2, 61 * 0.04).to(args.device)
        codes = model.encode(audio, posthoc_bottleneck="2x15625_700bps").audio_codes
        say("decode")
        expected = model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
    say("stream, 1 frame per chunk, steps of 2")
    chunks = list(model.decode_stream(codes.split(1, dim=-1), "2x15625_700bps", step_frames=2))
    actual = torch.cat(chunks, dim=-1)
    error = float((actual - expected).abs().max() / expected.abs().max())
    say(f"done: {len(chunks)} chunks, max error {error:.2e} of the peak")
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
