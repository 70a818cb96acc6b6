"""Prints (and saves as JSON) the parity errors against the original for every backend and dtype on this machine.

    python -m tests.parity_report [--output parity.json]

Reproduces the figures quoted in the issue notes: run it on CPU here and on the device GPU.
"""

import argparse
import importlib.util
import json

import torch

from .test_parity_with_original import CONFIG_NAMES, load_fixture, measure_parity


def backends(device: str) -> list[str]:
    if device == "cpu":
        return ["eager", "sdpa"]  # flex and flash refuse the CPU with a clear error
    names = ["eager", "sdpa", "flex_attention"]
    if importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attention_2")
    return names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="parity.json")
    parser.add_argument("--backends", nargs="*", help="only these attention implementations")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # exact fp32 convolutions
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for backend in args.backends or backends(device):
            if backend.startswith("flash") and dtype == torch.float32:
                continue  # refused with a clear error: flash kernels have no fp32
            for name in CONFIG_NAMES:
                model, reference = load_fixture(name, backend, device=device, dtype=dtype)
                results = measure_parity(model, reference)
                rows.append(
                    {
                        "device": device,
                        "dtype": str(dtype).removeprefix("torch."),
                        "backend": backend,
                        "config": name,
                        **results,
                    }
                )
    keys = [key for key in rows[0] if key not in ("device", "dtype", "backend", "config")]
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print("| dtype | backend | config | " + " | ".join(keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for row in rows:
        cells = [f"{row[key]:.2e}" if not key.startswith("codes") else f"{row[key]:.4f}" for key in keys]
        print(f"| {row['dtype']} | {row['backend']} | {row['config']} | " + " | ".join(cells) + " |")
    with open(args.output, "w") as handle:
        json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
