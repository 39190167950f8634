"""ttd info: versions, device, known weights, dense variants, the embedded models."""

from __future__ import annotations

import json
import platform




def add(sub) -> None:
    p = sub.add_parser("info", help="versions, device, known weights and dense variants")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import torch

    from .. import __version__
    from ..io import default_device
    from ..models.registry import DENSE_VARIANTS
    from ..models.weights import KNOWN_WEIGHTS, embedded_adapter, embedded_models

    info = {
        "ttd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(default_device()),
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "weights": sorted(KNOWN_WEIGHTS),
        "dense_variants": list(DENSE_VARIANTS),
        # "adapter": a path --adapter accepts as printed
        "embedded": [{"name": name, "adapter": str(embedded_adapter(name)), "kind": spec.kind, "dense": spec.dense}
                     for name, spec in embedded_models().items()],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            if key == "embedded":
                value = "; ".join(f"{e['name']} ({e['kind']}, {e['dense']}, adapter {e['adapter']})" for e in value)
            value = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {value}")
    return 0
