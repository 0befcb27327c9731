"""PyTorch's time for the networks of `npm run bench networks` (bench/networks.ts), fp32, 2 threads,
torch.no_grad(), eager (oneDNN's convolutions where the build has them): the column "PyTorch ms".

  python3 torch_networks.py NET INPUT.f32 D H W REPS OUT.f32 [--onednn]

NET is an ONNX file of nnU-Net's PlainConvUNet or ResEnc-M as bhsd's nnU-Net builder makes them
(3-D, or 2-D for the 2d configuration: D is then 1 and the input [1, 1, H, W])
(Conv, InstanceNormalization, LeakyRelu, ConvTranspose, Concat, Add, AveragePool; and STU-Net's nearest
Resize), run here as the
PyTorch calls dynamic-network-architectures' modules make, in the graph's order, with its weights
(F.conv3d, F.instance_norm, in-place leaky_relu_, F.conv_transpose3d, torch.cat, in-place add_,
F.avg_pool3d) — the same network in PyTorch without dynamic-network-architectures installed;
or `segresnet` / `unetr` / `swinunetr`: MONAI 1.4.0's module itself, built by bench/models/make_*.py's build()
(seed 17: the exported weights; MONAI on PYTHONPATH), or `primus`: dynamic-network-architectures' Primus-S as
bench/models/make_primus.py builds it (timm and einops on PYTHONPATH), or `umamba-bot`: U-Mamba's UMambaBot
with bench/models/make_umamba.py's weights (its sources as that script recorded them, einops on
PYTHONPATH; mamba_ssm's reference scan, selective_scan_ref, as PyTorch without CUDA runs Mamba). The input is D×H×W float32 (one channel);
the output of the last run is written to OUT.f32 so that the bench can check it is the network bhsd
ran (same output). Prints one JSON line: {"ms": median of REPS after one warm-up, "threads",
"mkldnn", "torch"}. --onednn: every forward convolution through oneDNN (onednn_forced). Written for PyTorch 1.13 (Debian's python3-torch) and onnx 1.x.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))


def onnx_network(path):
    import onnx
    from onnx import numpy_helper

    g = onnx.load(path).graph
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    uses = {}  # consumers of each value; the graph's input and outputs count once more (never in place)
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for v in [*g.input, *g.output]:
        uses[v.name] = uses.get(v.name, 0) + 1
    steps = []
    for n in g.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        op, ins, out = n.op_type, list(n.input), n.output[0]
        if op in ("Conv", "ConvTranspose"):
            wt, b = w[ins[1]], w[ins[2]] if len(ins) > 2 and ins[2] else None
            r = wt.dim() - 2  # spatial axes: 3 (3d_fullres) or 2 (nnU-Net's 2d configuration)
            pads = a.get("pads", [0] * 2 * r)
            if pads[:r] != pads[r:]:
                raise ValueError(f"{n.name}: asymmetric pads {pads}")
            kw = dict(stride=a.get("strides", [1] * r), padding=pads[:r], dilation=a.get("dilations", [1] * r),
                      groups=a.get("group", 1))
            if op == "ConvTranspose":
                kw["output_padding"] = a.get("output_padding", [0] * r)
            # (looked up at call time: --onednn replaces F.conv2d / F.conv3d)
            if op == "Conv":
                steps.append((out, ins[:1], lambda x, wt=wt, b=b, kw=kw, r=r: getattr(F, f"conv{r}d")(x, wt, b, **kw)))
            else:
                steps.append((out, ins[:1], lambda x, wt=wt, b=b, kw=kw, r=r: getattr(F, f"conv_transpose{r}d")(x, wt, b, **kw)))
        elif op == "InstanceNormalization":
            s, b, eps = w[ins[1]], w[ins[2]], a.get("epsilon", 1e-5)
            steps.append((out, ins[:1], lambda x, s=s, b=b, eps=eps: F.instance_norm(x, weight=s, bias=b, eps=eps)))
        elif op == "LeakyRelu":
            al, inplace = a.get("alpha", 0.01), uses[ins[0]] == 1
            steps.append((out, ins, lambda x, al=al, ip=inplace: F.leaky_relu_(x, al) if ip else F.leaky_relu(x, al)))
        elif op == "Relu":
            steps.append((out, ins, lambda x, ip=uses[ins[0]] == 1: F.relu_(x) if ip else F.relu(x)))
        elif op == "Add":
            steps.append((out, ins, lambda x, y, ip=uses[ins[0]] == 1: x.add_(y) if ip else x + y))
        elif op == "Concat":
            steps.append((out, ins, lambda *xs, ax=a["axis"]: torch.cat(xs, ax)))
        elif op == "AveragePool":
            r = len(a["kernel_shape"])
            pads = a.get("pads", [0] * 2 * r)
            steps.append((out, ins, lambda x, k=a["kernel_shape"], s=a.get("strides", a["kernel_shape"]), p=pads[:r],
                          c=bool(a.get("ceil_mode", 0)), z=not a.get("count_include_pad", 0), r=r:
                          getattr(F, f"avg_pool{r}d")(x, k, s, p, ceil_mode=c, count_include_pad=not z)))
        elif op == "Constant":
            w[out] = torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
        elif op == "Identity":
            # (torch.onnx's deduplicated initializers: a weight equal to another's is an Identity of it)
            if ins[0] in w:
                w[out] = w[ins[0]]
            else:
                steps.append((out, ins[:1], lambda x: x))
        elif op == "Resize" and a.get("mode", b"nearest") in (b"nearest", "nearest"):
            # STU-Net's Upsample_Layer_nearest: F.interpolate(x, scale_factor=pool, mode="nearest")
            sc = [float(v) for v in w[ins[2]].tolist()][2:]
            steps.append((out, ins[:1], lambda x, sc=sc: F.interpolate(x, scale_factor=sc, mode="nearest")))
        else:
            raise ValueError(f"{op} is not among the ops of nnU-Net's PlainConvUNet, ResEnc-M and STU-Net")
    inp, outp = g.input[0].name, g.output[0].name
    rank = len(g.input[0].type.tensor_type.shape.dim)

    def forward(x):
        env = {inp: x if x.dim() == rank else x.reshape(x.shape[0], x.shape[1], *x.shape[2 + x.dim() - rank:])}
        for o, ins, f in steps:
            env[o] = f(*(env[i] for i in ins))
        return env[outp]

    return forward


def onednn_forced():
    """F.conv3d through oneDNN always (torch.mkldnn_convolution). PyTorch 1.13 sends a convolution to
    oneDNN only where batch · channels · depth · height > 20480 or the kernel is over 3 wide (its
    heuristic in ConvParams::use_mkldnn), else to slow_conv3d (im2col and the BLAS: Debian's build
    has a generic one): SegResNet's 8-channel layers at 16×64×64 go there. Transposed convolutions
    keep PyTorch's own choice (1.13 does not expose oneDNN's)."""
    def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        t = lambda v: list(v) if isinstance(v, (tuple, list)) else [v] * (w.dim() - 2)  # noqa: E731
        if isinstance(padding, str):
            raise ValueError("padding given as a string")
        return torch.mkldnn_convolution(x, w, b, t(padding), t(stride), t(dilation), groups)

    F.conv3d = conv
    F.conv2d = conv


def monai_network(name):
    sys.path.insert(0, os.path.join(here, "models"))
    if name == "umamba-bot":
        return __import__("make_umamba").build("bot")
    if name == "primus-v2":
        return __import__("make_primus").build(v2=True)
    mod = __import__({"segresnet": "make_segresnet", "unetr": "make_unetr", "swinunetr": "make_swinunetr",
                      "primus": "make_primus", "mednext": "make_mednext"}[name])
    return mod.build()


def main():
    net, inp, d, h, w, reps, out = sys.argv[1:8]
    torch.set_num_threads(2)
    if "--onednn" in sys.argv[8:]:
        onednn_forced()
    forward = monai_network(net) if net in ("segresnet", "unetr", "swinunetr", "primus", "mednext", "umamba-bot", "primus-v2") else onnx_network(net)
    x = torch.from_numpy(np.fromfile(inp, dtype=np.float32).reshape(1, 1, int(d), int(h), int(w)))
    ts = []
    with torch.no_grad():
        for _ in range(int(reps) + 1):
            t0 = time.perf_counter()
            y = forward(x)
            ts.append(time.perf_counter() - t0)
    y.numpy().astype(np.float32).tofile(out)
    print(json.dumps({"ms": float(np.median(ts[1:])) * 1000, "threads": torch.get_num_threads(),
                      "mkldnn": torch.backends.mkldnn.is_available(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
