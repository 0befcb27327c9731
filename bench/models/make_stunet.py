"""STU-Net-B as nnUNet-2.2's STUNetTrainer_base builds it (uni-medical/STU-Net: six stages of one
residual block each, widths 32 · [1, 2, 4, 8, 16, 16], kernels 3, nearest-neighbour up-sampling;
58 M parameters) for a 32 × 128 × 128 patch of BHSD's 5 × 0.49 × 0.49 mm CTs (the plans' strides
[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]: the trainer takes the last five),
1 input channel and 6 classes, random weights (seed 17). Writes, beside this file and never
committed (.gitignore: about 230 MB each), an nnU-Net v2 results folder
(`stunet_b/Dataset001_BHSD/STUNetTrainer_base__nnUNetPlans__3d_fullres`: plans.json, dataset.json,
fold_0/checkpoint_final.pth), what `loadNnunet` reads, and its torch.onnx export (opset 17, the input
fixed) for onnxruntime.
  /usr/bin/python3 bench/models/make_stunet.py STUNET_SOURCE
STUNET_SOURCE: a checkout of uni-medical/STU-Net (commit 0652eaf); STUNetTrainer.py is run with its
one import (nnUNetTrainer) stood in for: only the network class is used.
"""
import json
import os
import sys
import types
import warnings

import torch

warnings.filterwarnings("ignore")
here = os.path.dirname(os.path.abspath(__file__))
SIZE = (32, 128, 128)
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]

for name in ("nnunetv2", "nnunetv2.training", "nnunetv2.training.nnUNetTrainer", "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["nnunetv2.training.nnUNetTrainer.nnUNetTrainer"].nnUNetTrainer = object
v2 = types.ModuleType("stunet_v2")
src = os.path.join(sys.argv[1], "nnUNet-2.2/nnunetv2/training/nnUNetTrainer/STUNetTrainer.py")
exec(compile(open(src).read(), "STUNetTrainer.py", "exec"), v2.__dict__)

torch.manual_seed(17)
# STUNetTrainer_base.build_network_architecture
net = v2.STUNet(1, 6, depth=[1] * 6, dims=[32 * x for x in [1, 2, 4, 8, 16, 16]], pool_op_kernel_sizes=STRIDES[1:],
                conv_kernel_sizes=[[3, 3, 3]] * 6, enable_deep_supervision=False).eval()
folder = os.path.join(here, "stunet_b", "Dataset001_BHSD", "STUNetTrainer_base__nnUNetPlans__3d_fullres")
os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
fixture = os.path.join(here, "..", "..", "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH",
                       "nnUNetTrainer__nnUNetPlans__3d_fullres")
plans = json.load(open(os.path.join(fixture, "plans.json")))
conf = plans["configurations"]["3d_fullres"]
plans["configurations"] = {"3d_fullres": conf}
conf["patch_size"] = list(SIZE)
ak = conf["architecture"]["arch_kwargs"]
ak.update(n_stages=6, strides=STRIDES, features_per_stage=[32, 64, 128, 256, 320, 320], kernel_sizes=[[3, 3, 3]] * 6,
          n_conv_per_stage=[2] * 6, n_conv_per_stage_decoder=[2] * 5)
json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=4)
json.dump(json.load(open(os.path.join(fixture, "dataset.json"))), open(os.path.join(folder, "dataset.json"), "w"), indent=4)
torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": "3d_fullres"},
            "trainer_name": "STUNetTrainer_base", "inference_allowed_mirroring_axes": (0, 1, 2)},
           os.path.join(folder, "fold_0", "checkpoint_final.pth"))
with open(os.path.join(here, "stunet_b.json"), "w") as f:
    json.dump({"folder": os.path.relpath(folder, here), "size": list(SIZE)}, f)
out = os.path.join(here, "stunet_b.onnx")
with torch.no_grad():
    torch.onnx.export(net, torch.randn(1, 1, *SIZE), out, opset_version=17, input_names=["input"], output_names=["output"],
                      do_constant_folding=True)
print(f"{out}: {sum(p.numel() for p in net.parameters())} parameters, {os.path.getsize(out) / 2**20:.0f} MB")
