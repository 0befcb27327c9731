"""MONAI SwinUNETR as the BTCV bundle (swin_unetr_btcv_segmentation) trains it — feature_size 48,
depths (2, 2, 2, 2), heads (3, 6, 12, 24), 7³ windows, v1 patch merging, instance norm — with 1 input
channel and 14 classes, random weights (seed 17): its state_dict as a MONAI user saves it
(swinunetr_btcv.pt, what `loadMonai` reads) and its torch.onnx.export (opset 13: torch 1.13 writes opset 17's LayerNormalization without its
scale where MONAI calls F.layer_norm, which ONNX's checker refuses; the input fixed at
SIZE) for onnxruntime, both beside this file and never committed (.gitignore: about 250 MB each).
MONAI 1.4.0 on PYTHONPATH, with einops (0.8.2; Debian has no package of it):
  PYTHONPATH=<MONAI 1.4.0>:<einops> /usr/bin/python3 bench/models/make_swinunetr.py [D H W]
"""
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
from monai.networks.nets import SwinUNETR  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
NETWORK_DEF = {"_target_": "SwinUNETR", "img_size": [96, 96, 96], "in_channels": 1, "out_channels": 14,
               "feature_size": 48}


def build():
    """The network with the saved weights (seed 17): bench/torch_networks.py times it in PyTorch."""
    torch.manual_seed(17)
    kw = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    return SwinUNETR(**kw).eval()


if __name__ == "__main__":
    size = tuple(int(v) for v in sys.argv[1:4]) if len(sys.argv) >= 4 else (64, 64, 64)
    m = build()
    torch.save(m.state_dict(), os.path.join(here, "swinunetr_btcv.pt"))
    with open(os.path.join(here, "swinunetr_btcv.json"), "w") as f:
        json.dump({"network_def": NETWORK_DEF, "size": list(size)}, f)
    out = os.path.join(here, "swinunetr_btcv.onnx")
    with torch.no_grad():
        torch.onnx.export(m, torch.randn(1, 1, *size), out, opset_version=13, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    print(f"{out}: {sum(p.numel() for p in m.parameters())} parameters, {os.path.getsize(out) / 2**20:.0f} MB")
