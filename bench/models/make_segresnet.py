"""MONAI 1.4.0 SegResNet at its default widths (init_filters 8, blocks_down (1, 2, 2, 4), blocks_up
(1, 1, 1), GroupNorm with 8 groups), 1 input channel, 6 classes, random weights (seed 17), exported by
torch.onnx.export (torch 1.13, opset 17, dynamic spatial axes) for `npm run bench networks`.
Run: PYTHONPATH=/path/to/monai-1.4.0 /usr/bin/python3 make_segresnet.py"""
import torch
from monai.networks.nets import SegResNet



def build():
    """The network with the exported weights (seed 17): bench/torch_networks.py times it in PyTorch."""
    torch.manual_seed(17)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=6).eval()


if __name__ == "__main__":
    m = build()
    x = torch.randn(1, 1, 16, 64, 64)
    axes = {"input": {2: "D", 3: "H", 4: "W"}, "output": {2: "D", 3: "H", 4: "W"}}
    with torch.no_grad():
        torch.onnx.export(m, x, "segresnet_default.onnx", opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
    print(sum(p.numel() for p in m.parameters()))
