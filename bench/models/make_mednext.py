"""MONAI 1.5's MedNeXt-S as create_mednext makes it (MedNeXtS: init_filters 32, expansion 2, blocks
(2, 2, 2, 2), residual connections, GroupNorm a group a channel; kernel 3), 1 input channel and 6
classes, random weights (seed 17): its state_dict as a MONAI user saves it (mednext_s.pt, what
`loadMonai` reads) and its torch.onnx.export (opset 17, the input fixed at SIZE) for onnxruntime,
both beside this file and never committed (.gitignore: about 22 MB each). MONAI 1.5.0 on PYTHONPATH
(or in MONAI15, which goes first: the bench's other MONAI rows need 1.4.0 on PYTHONPATH):
  PYTHONPATH=<MONAI 1.5.0> /usr/bin/python3 bench/models/make_mednext.py [D H W]
"""
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
if os.environ.get("MONAI15"):
    sys.path.insert(0, os.environ["MONAI15"])
from monai.networks.nets import MedNeXtS  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
NETWORK_DEF = {"_target_": "MedNeXtS", "in_channels": 1, "out_channels": 6, "kernel_size": 3}


def build():
    """The network with the saved weights (seed 17): bench/torch_networks.py times it in PyTorch."""
    torch.manual_seed(17)
    kw = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    return MedNeXtS(**kw).eval()


if __name__ == "__main__":
    size = tuple(int(v) for v in sys.argv[1:4]) if len(sys.argv) >= 4 else (32, 128, 128)
    m = build()
    torch.save(m.state_dict(), os.path.join(here, "mednext_s.pt"))
    with open(os.path.join(here, "mednext_s.json"), "w") as f:
        json.dump({"network_def": NETWORK_DEF, "size": list(size)}, f)
    out = os.path.join(here, "mednext_s.onnx")
    with torch.no_grad():
        torch.onnx.export(m, torch.randn(1, 1, *size), out, opset_version=17, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    print(f"{out}: {sum(p.numel() for p in m.parameters())} parameters, {os.path.getsize(out) / 2**20:.0f} MB")
