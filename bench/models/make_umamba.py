"""U-Mamba as its nnU-Net v2 trainers build it (bowang-lab/U-Mamba's nets/UMamba{Bot,Enc}_3d.py over
mamba_ssm's Mamba) for a 32 × 128 × 128 patch of BHSD's 5 × 0.49 × 0.49 mm CTs — the plans' six stages
of 32 · [1, 2, 4, 8, 10, 10] channels (nnU-Net's cap of 320), strides [1, 1, 1], [1, 2, 2], [2, 2, 2],
[2, 2, 2], [2, 2, 2], [1, 2, 2], kernels [1, 3, 3] then [3, 3, 3], two blocks a stage (U-Mamba's
one in the second half) — 1 input channel, 6 classes, random weights (seed 17). Writes, beside this
file and never committed (.gitignore), nnU-Net v2 results folders
(`umamba/Dataset001_BHSD/nnUNetTrainerUMamba{Bot,Enc}__nnUNetPlans__3d_fullres`: plans.json,
dataset.json, fold_0/checkpoint_final.pth), what `loadNnunet` reads, and umamba.json (the folders,
the size, the sources) for bench/networks.ts. No ONNX: torch.onnx cannot export mamba_ssm's scan.
build("bot") gives the Bot network with those weights to bench/torch_networks.py.
  PYTHONPATH=<einops> /usr/bin/python3 bench/models/make_umamba.py UMAMBA_SOURCE MAMBA_SOURCE DNA_SOURCE
(the sources as test/fixtures/nnunet-umamba/make.py takes them; the stand-ins of sources.py there)
"""
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "..")
sys.path.insert(0, os.path.join(root, "test", "fixtures", "nnunet-umamba"))
import sources  # noqa: E402

SIZE = [32, 128, 128]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
KERNELS = [[1, 3, 3]] + [[3, 3, 3]] * 5
FEATURES = [32, 64, 128, 256, 320, 320]


def network(net_module, variant):
    cls = {"bot": ("UMambaBot_3d", "UMambaBot"), "enc": ("UMambaEnc_3d", "UMambaEnc")}[variant]
    extra = {"input_size": SIZE} if variant == "enc" else {}
    return getattr(net_module(cls[0]), cls[1])(
        input_channels=1, n_stages=6, features_per_stage=FEATURES, conv_op=torch.nn.Conv3d, kernel_sizes=KERNELS,
        strides=STRIDES, n_conv_per_stage=[2] * 6, num_classes=6, n_conv_per_stage_decoder=[2] * 5, conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
        **extra).eval()


def build(variant="bot"):
    """The network of `variant` with the folder's weights (for bench/torch_networks.py)."""
    meta = json.load(open(os.path.join(here, "umamba.json")))
    net = network(sources.load(*meta["sources"]), variant)
    ck = torch.load(os.path.join(here, meta["folders"][variant], "fold_0", "checkpoint_final.pth"), map_location="cpu")
    net.load_state_dict(ck["network_weights"])
    return net


if __name__ == "__main__":
    srcs = [os.path.abspath(p) for p in sys.argv[1:4]]
    net_module = sources.load(*srcs)
    fixture = os.path.join(root, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH",
                           "nnUNetTrainer__nnUNetPlans__3d_fullres")
    plans = json.load(open(os.path.join(fixture, "plans.json")))
    conf = {k: v for k, v in plans["configurations"]["3d_fullres"].items() if k != "architecture"}
    conf.update(patch_size=SIZE, UNet_class_name="PlainConvUNet", UNet_base_num_features=32, unet_max_num_features=320,
                n_conv_per_stage_encoder=[2] * 6, n_conv_per_stage_decoder=[2] * 5, pool_op_kernel_sizes=STRIDES,
                conv_kernel_sizes=KERNELS, num_pool_per_axis=[3, 5, 5])
    plans["configurations"] = {"3d_fullres": conf}
    folders = {}
    for variant in ("bot", "enc"):
        torch.manual_seed(17)
        net = network(net_module, variant)
        trainer = f"nnUNetTrainerUMamba{variant.capitalize()}"
        folder = os.path.join(here, "umamba", "Dataset001_BHSD", f"{trainer}__nnUNetPlans__3d_fullres")
        os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
        json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=4)
        json.dump(json.load(open(os.path.join(fixture, "dataset.json"))), open(os.path.join(folder, "dataset.json"), "w"),
                  indent=4)
        torch.save({"network_weights": net.state_dict(), "init_args": {"configuration": "3d_fullres"},
                    "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   os.path.join(folder, "fold_0", "checkpoint_final.pth"))
        folders[variant] = os.path.relpath(folder, here)
        print(f"{trainer}: {sum(p.numel() for p in net.parameters())} parameters")
    with open(os.path.join(here, "umamba.json"), "w") as f:
        json.dump({"folders": folders, "size": SIZE, "sources": srcs}, f)
