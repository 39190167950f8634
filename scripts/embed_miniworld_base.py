"""Put a pretrained mini-world base, or its TTD adapter, into the package as ``ttd`` ships them.

    python scripts/embed_miniworld_base.py miniworld-clip --weights RUN/model.safetensors
    python scripts/embed_miniworld_base.py miniworld-clip --adapter RUNS/miniworld-clip-balanced-XXXX/adapter.safetensors
    python scripts/embed_miniworld_base.py miniworld --weights RUN/tcl.pth --out runs/mw2/tcl.pth   # a copy elsewhere

``--weights``: an fp16 copy at the registry's packaged path (``KNOWN_WEIGHTS[NAME].packaged``;
half the fp32 size, so each file stays well under the 25 MB limit on committed files), recording
the registered name as its source: a CLIP as a ttd ``.safetensors`` with its calibration and the
``miniworld`` protocol, a TCL-like base as a ``tcl.pth`` (``--out`` writes the copy elsewhere, e.g.
for a base the registry does not hold as its kind yet). ``--adapter``: the adapter rewritten at
the registry's adapter path with ``base`` set to the registered name; it must have been trained on
the embedded fp16 copy (its base fingerprint is checked), which is why the reported TTD runs of
``benchmarks/reproduce_miniworld.py`` train on these copies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ttd.io import asset
from ttd.models import load_model
from ttd.models.lora import load_adapter, save_adapter
from ttd.models.tcl import TCL, save_tcl
from ttd.models.weights import KNOWN_WEIGHTS, embedded_models, save_weights


def embed_weights(name: str, weights: str, out: Path | None = None) -> None:
    spec = KNOWN_WEIGHTS[name]
    model = load_model(weights)  # the file's own variant: tcl for a tcl.pth; the readout does not change the weights
    model.source = name  # what its adapters record as their base
    out = out or asset(spec.packaged)
    if isinstance(model, TCL) != (out.suffix == ".pth"):
        raise SystemExit(f"{weights} and {out} differ in kind (a TCL-like base is written as a tcl.pth, a CLIP as "
                         ".safetensors): pass --out with the right suffix, or register the base as its kind")
    if isinstance(model, TCL):
        save_tcl(model, out, dtype=torch.float16)
    else:
        save_weights(model.half(), out, protocol=spec.protocol)
    print(f"{name}: {weights} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def embed_adapter(name: str, adapter: str) -> None:
    spec = KNOWN_WEIGHTS[name]
    model = load_adapter(load_model(name, dense=spec.dense), adapter)  # refuses an adapter of other weights
    out = save_adapter(model, asset(spec.adapter))
    print(f"{name}: adapter {adapter} -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(embedded_models()), help="the registered name")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--weights", help="the pretraining output (ttd .safetensors, or tcl.pth for a TCL-like base)")
    what.add_argument("--adapter", help="a TTD adapter trained on the embedded copy of NAME")
    parser.add_argument("--out", type=Path, help="with --weights: write the fp16 copy here instead of into the package")
    args = parser.parse_args(argv)
    if args.weights:
        embed_weights(args.name, args.weights, args.out)
    else:
        embed_adapter(args.name, args.adapter)


if __name__ == "__main__":
    main()
