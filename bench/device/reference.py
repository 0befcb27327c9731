"""The references for the GPU benchmark, on the same card in the same run (bench/device/run.sh):
PyTorch for the convolution layers and the nnU-Net-shaped forward (fp32 with TF32 off, TF32,
fp16 and bf16 autocast), CuPy for connected components and the distance transform.
Reads DIR/spec.json and the masks that `tsx bench/device/gpu.ts inputs DIR` wrote; writes
DIR/reference.json. Times are medians of device-side runs (CUDA events / synchronize)."""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

d = sys.argv[1]
spec = json.load(open(f"{d}/spec.json"))
dev = torch.device("cuda")
out = {"device": torch.cuda.get_device_name(0), "conv": {}, "unet": {}, "label": {}, "edt": {}}


def timed(fn, reps, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1000)
    return float(np.median(ts))


def mode_ctx(mode):
    torch.backends.cudnn.allow_tf32 = mode != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
    if mode in ("fp16", "bf16"):
        return torch.autocast("cuda", dtype=torch.float16 if mode == "fp16" else torch.bfloat16)
    return torch.autocast("cuda", enabled=False)


torch.backends.cudnn.benchmark = True
with torch.inference_mode():
    for C, Co, (D, H, W) in spec["convs"]:
        x = torch.randn(1, C, D, H, W, device=dev)
        w = torch.randn(Co, C, 3, 3, 3, device=dev) * 0.1
        b = torch.randn(Co, device=dev)
        key = f"{C}-{Co}-{D}x{H}x{W}"
        out["conv"][key] = {}
        for mode in ("fp32", "tf32", "fp16", "bf16"):
            with mode_ctx(mode):
                out["conv"][key][mode] = timed(lambda: F.conv3d(x, w, b, padding=1), 20)
        print(key, out["conv"][key], flush=True)

    # The same network as lib/train/unet.ts buildUNet(NNUNET_FULLRES).
    u = spec["unet"]

    def block(cin, cout, k, s):
        return nn.Sequential(nn.Conv3d(cin, cout, k, s, [(q - 1) // 2 for q in k]), nn.InstanceNorm3d(cout, eps=1e-5, affine=True), nn.LeakyReLU(0.01))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            f, k, s = u["features"], [tuple(x) for x in u["kernels"]], [tuple(x) for x in u["strides"]]
            self.enc = nn.ModuleList()
            cin = u["inChannels"]
            for i, fi in enumerate(f):
                self.enc.append(nn.Sequential(block(cin, fi, k[i], s[i]), block(fi, fi, k[i], (1, 1, 1))))
                cin = fi
            self.up, self.dec = nn.ModuleList(), nn.ModuleList()
            for i in range(len(f) - 2, -1, -1):
                self.up.append(nn.ConvTranspose3d(cin, f[i], s[i + 1], s[i + 1]))
                self.dec.append(nn.Sequential(block(2 * f[i], f[i], k[i], (1, 1, 1)), block(f[i], f[i], k[i], (1, 1, 1))))
                cin = f[i]
            self.head = nn.Conv3d(cin, u["classes"], 1)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
            for j, (up, dec) in enumerate(zip(self.up, self.dec)):
                x = dec(torch.cat([up(x), skips[len(skips) - 2 - j]], 1))
            return self.head(x)

    net = UNet().to(dev).eval()
    x = torch.randn(*spec["unetInput"], device=dev)
    for mode in ("tf32", "fp16", "bf16", "fp32"):
        with mode_ctx(mode):
            out["unet"][mode] = timed(lambda: net(x), 5, warm=2)
        print("unet", mode, out["unet"][mode], flush=True)
    del net, x
    torch.cuda.empty_cache()

try:
    import cupy as cp
    from cupyx.scipy import ndimage as cnd

    def ctimed(fn, reps=10):
        fn()
        cp.cuda.Device().synchronize()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            cp.cuda.Device().synchronize()
            ts.append((time.perf_counter() - t0) * 1000)
        return float(np.median(ts))

    for name in spec["masks"]:
        a = cp.asarray(np.load(f"{d}/{name}.npy"))
        for conn, rank in (("26", 3), ("6", 1)):
            st = cp.asarray(np.ones((3, 3, 3)) if rank == 3 else np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]))
            out["label"][f"{name}:{conn}"] = ctimed(lambda: cnd.label(a, st))
        if name == "blobs":
            out["edt"]["blobs"] = ctimed(lambda: cnd.distance_transform_edt(a == 0, sampling=(5.0, 0.488, 0.488)), 5)
    print("cupy", out["label"], out["edt"], flush=True)
except Exception as e:  # noqa: BLE001 — reported, the torch figures still stand
    print("cupy reference failed:", e, flush=True)

json.dump(out, open(f"{d}/reference.json", "w"))
