"""nnU-Net's Primus-S as nnUNet_Primus_S_Trainer builds it (dynamic-network-architectures' Primus:
width 396, 12 EVA blocks of 6 heads, 8³ patch embedding, drop_path 0.2, scale_attn_inner, layer
scale 0.1) for a patch of SIZE (default 32 × 128 × 128: 1024 tokens), 1 input channel and 6 classes
(BHSD's), random weights (seed 17). Writes, beside this file and never committed (.gitignore: about
90 MB each), an nnU-Net results folder (`primus_s/Dataset001_BHSD/nnUNet_Primus_S_Trainer__nnUNetPlans__3d_fullres`:
plans.json with that patch, dataset.json, fold_0/checkpoint_final.pth), what `loadNnunet` reads,
and its torch.onnx export (opset 17, the input fixed at SIZE) for onnxruntime.
dynamic-network-architectures, timm and einops on PYTHONPATH (timm 1.0.29 with the one-method
replacement test/fixtures/nnunet-primus/README.md explains):
  PYTHONPATH=<dynamic-network-architectures>:<timm, einops> /usr/bin/python3 bench/models/make_primus.py [D H W] [--v2] [--name NAME]
--v2: PrimusV2-S instead (nnUNet_PrimusV2S_Trainer: the same transformer after a patch embedding of residual
blocks), written as primus_v2s/, primus_v2s.json and primus_v2s.onnx.
--name NAME: written as NAME/, NAME.json and NAME.onnx (the bench's primus_s_4k: `32 256 256 --name
primus_s_4k`, 4096 tokens, a BHSD-sized patch, where attention is two thirds of the forward).
"""
import json
import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore")
from timm.layers import RotaryEmbeddingCat  # noqa: E402
from dynamic_network_architectures.architectures.primus import Primus, PrimusV2S  # noqa: E402


def _init_buffers_1_0_22(self):
    if not self._use_cached_embed:
        self.bands.copy_(self._compute_bands())
    else:
        self.pos_embed = self._get_pos_embed_values(self.feat_shape)


RotaryEmbeddingCat._init_buffers = _init_buffers_1_0_22
here = os.path.dirname(os.path.abspath(__file__))


def size_of(v2=False):
    p = os.path.join(here, "primus_v2s.json" if v2 else "primus_s.json")
    return tuple(json.load(open(p))["size"]) if os.path.exists(p) else (32, 128, 128)


def build(size=None, v2=False):
    """The network with the saved weights (seed 17): bench/torch_networks.py times it in PyTorch.
    v2: PrimusV2-S as nnUNet_PrimusV2S_Trainer builds it (the residual-block patch embedding)."""
    torch.manual_seed(17)
    if v2:
        return PrimusV2S(1, 6, (8, 8, 8), tuple(size or size_of(True)), drop_path_rate=0.2, scale_attn_inner=True,
                         init_values=0.1).eval()
    return Primus(1, 396, (8, 8, 8), 6, 12, 6, tuple(size or size_of()), drop_path_rate=0.2, scale_attn_inner=True,
                  init_values=0.1).eval()


if __name__ == "__main__":
    v2 = "--v2" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--v2"]
    given_name = None
    if "--name" in args:
        i = args.index("--name")
        given_name = args[i + 1]
        del args[i : i + 2]
    size = tuple(int(v) for v in args[:3]) if len(args) >= 3 else (32, 128, 128)
    m = build(size, v2)
    name, trainer = ("primus_v2s", "nnUNet_PrimusV2S_Trainer") if v2 else ("primus_s", "nnUNet_Primus_S_Trainer")
    name = given_name or name
    folder = os.path.join(here, name, "Dataset001_BHSD", f"{trainer}__nnUNetPlans__3d_fullres")
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    src = os.path.join(here, "..", "..", "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH",
                       "nnUNetTrainer__nnUNetPlans__3d_fullres")
    plans = json.load(open(os.path.join(src, "plans.json")))
    plans["configurations"] = {"3d_fullres": plans["configurations"]["3d_fullres"]}
    plans["configurations"]["3d_fullres"]["patch_size"] = list(size)
    json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=4)
    json.dump(json.load(open(os.path.join(src, "dataset.json"))), open(os.path.join(folder, "dataset.json"), "w"), indent=4)
    torch.save({"network_weights": m.state_dict(), "init_args": {"configuration": "3d_fullres"},
                "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1, 2)},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    with open(os.path.join(here, f"{name}.json"), "w") as f:
        json.dump({"folder": os.path.relpath(folder, here), "size": list(size)}, f)
    out = os.path.join(here, f"{name}.onnx")
    with torch.no_grad():
        torch.onnx.export(m, torch.randn(1, 1, *size), out, opset_version=17, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    print(f"{out}: {sum(p.numel() for p in m.parameters())} parameters, {os.path.getsize(out) / 2**20:.0f} MB")
