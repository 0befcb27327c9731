"""MONAI 1.4.0 UNETR at its real widths (the BTCV configuration's: feature_size 16, hidden 768,
MLP 3072, 12 heads, 12 layers, conv patch embedding, instance norm, residual blocks), 1 input
channel, 6 classes, img_size 32×128×128 (16³ patches: 2×8×8 = 128 tokens), random weights (seed 17),
exported by torch.onnx.export (torch 1.13, opset 17; UNETR's positional embedding fixes the input
shape) to unetr_real.onnx beside this file — about 370 MB, so it is made here for `npm run bench
networks` and never committed (.gitignore). einops, which MONAI's attention block calls and Debian
does not package, is stood in for by test/fixtures/networks/make_fixtures.py's stub.
Run: PYTHONPATH=/path/to/monai-1.4.0 /usr/bin/python3 bench/models/make_unetr.py"""
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "test", "fixtures", "networks"))
from make_fixtures import install_einops_stub  # noqa: E402

install_einops_stub()
from monai.networks.nets import UNETR  # noqa: E402

shape = (32, 128, 128)


def build():
    """The network with the exported weights (seed 17): bench/torch_networks.py times it in PyTorch."""
    torch.manual_seed(17)
    return UNETR(in_channels=1, out_channels=6, img_size=shape, feature_size=16, hidden_size=768, mlp_dim=3072,
                 num_heads=12, proj_type="conv", norm_name="instance", res_block=True, dropout_rate=0.0).eval()


if __name__ == "__main__":
    m = build()
    x = torch.randn(1, 1, *shape)
    out = os.path.join(here, "unetr_real.onnx")
    with torch.no_grad():
        torch.onnx.export(m, x, out, opset_version=17, input_names=["input"], output_names=["output"],
                          do_constant_folding=True)
    print(f"{out}: {sum(p.numel() for p in m.parameters())} parameters, {os.path.getsize(out) / 2**20:.0f} MB")
