/**
 * `npm run bench monai`: a MONAI bundle end to end on a BHSD-sized CT — bhsd's segment() on the
 * folder beside MONAI's own pipeline (ConfigParser's preprocessing, SlidingWindowInferer and
 * postprocessing, PyTorch on the CPU) in the same run, and how many voxels the two label alike.
 *
 * The bundle is spleen_ct_segmentation's pipeline (Orientationd RAS, Spacingd to 1.5 × 1.5 × 2 mm,
 * ScaleIntensityRanged, 96³ windows with overlap 0.25, softmax, Invertd, argmax) with its UNet
 * (channels 16…256, four strides of 2, two residual units, batch norm) for six classes, random
 * weights; the CT a 512 × 512 × 40 phantom at 0.45 × 0.45 × 5 mm. MONAI is imported from the
 * Python path: `PYTHONPATH=/path/to/MONAI npm run bench monai` (MONAI 1.4.0's sources were used).
 */
import { join } from "node:path";
import { backendInfo, loadMonai, readNifti, readNpy, segment, setBackend } from "../dist/index.js";
import { fmt, median, pythonWith, runPython } from "./lib.js";

const MAKE = String.raw`
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch, nibabel as nib, monai
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged
torch.set_num_threads(int(sys.argv[2]))
d = sys.argv[1]
root = os.path.join(d, "bundle")
os.makedirs(os.path.join(root, "configs"), exist_ok=True)
os.makedirs(os.path.join(root, "models"), exist_ok=True)
rng = np.random.default_rng(1)
ct = rng.normal(35, 10, size=(512, 512, 40))
for _ in range(40):
    lo = [rng.integers(0, s) for s in ct.shape]
    hi = [l + rng.integers(4, max(5, s // 3)) for l, s in zip(lo, ct.shape)]
    ct[tuple(slice(l, h) for l, h in zip(lo, hi))] = rng.choice([70, 1000, -1000, 55, 90]) + rng.normal(0, 5)
ct_path = os.path.join(d, "ct.nii.gz")
nib.save(nib.Nifti1Image(np.round(ct).astype(np.int16), np.diag([-0.45, -0.45, 5.0, 1.0])), ct_path)
cfg = {
  "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                  "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
  "preprocessing": {"_target_": "Compose", "transforms": [
    {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0, "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"}]},
  "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.25},
  "postprocessing": {"_target_": "Compose", "transforms": [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
}
with open(os.path.join(root, "configs", "inference.json"), "w") as f:
    json.dump(cfg, f)
parser = ConfigParser(); parser.read_config(os.path.join(root, "configs", "inference.json"))
torch.manual_seed(0)
net = parser.get_parsed_content("network_def").eval()
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.2)
torch.save(net.state_dict(), os.path.join(root, "models", "model.pt"))
pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
def run():
    data = pre({"image": ct_path})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], net)[0]
    return post(data)["pred"].numpy()[0]
ts = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); out = run(); ts.append((time.perf_counter() - t) * 1e3)
np.save(os.path.join(d, "monai_labels.npy"), np.ascontiguousarray(out.astype(np.uint8).transpose(2, 1, 0)))
print(json.dumps({"ms": sorted(ts)[len(ts) // 2], "monai": monai.__version__, "torch": torch.__version__}))
`;

export async function benchMonai(dir: string, threads: number): Promise<string[]> {
  const py = pythonWith("torch", "nibabel", "monai");
  if (!py) return ["MONAI bundle: skipped — no python3 with torch, nibabel and monai (PYTHONPATH=/path/to/MONAI npm run bench monai)"];
  const reps = 3;
  const ref = runPython<{ ms: number; monai: string; torch: string }>(py, MAKE, [dir, String(threads), String(reps)]);
  const ct = await readNifti(join(dir, "ct.nii.gz"));
  const want = (await readNpy(join(dir, "monai_labels.npy"))).data;
  const lines = [
    `A MONAI bundle end to end (spleen_ct_segmentation's pipeline and UNet 16…256 with two residual units, six classes) on a 512 × 512 × 40 CT at 0.45 × 0.45 × 5 mm: Orientationd, Spacingd to 1.5 × 1.5 × 2 mm (the grid GRID), 96³ windows with overlap 0.25 (WINDOWS of them), softmax, Invertd, argmax. bhsd's segment() on the bundle folder (loadMonai, the public calls, fresh outputs) beside MONAI ${ref.monai}'s own pipeline (ConfigParser's preprocessing, SlidingWindowInferer and postprocessing) on PyTorch ${ref.torch}, ${threads} threads each; medians of ${reps}`,
    "",
    "| engine | ms | MONAI's time / this | voxels labelled as MONAI |",
    "| --- | --- | --- | --- |",
    `| MONAI (PyTorch) | ${fmt(ref.ms, 0)} | 1.00 | — |`,
  ];
  // (the TypeScript backend would take minutes a run at these sizes: the native one is what a user runs)
  for (const b of ["native"] as const) {
    if (!backendInfo().available[b]) continue;
    setBackend(b);
    const model = await loadMonai(join(dir, "bundle"));
    const times: number[] = [];
    let labels: Uint8Array | undefined;
    let grid = "",
      windows = 0,
      steps = "";
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      const r = await segment(ct, model);
      times.push(performance.now() - t0);
      labels = r.labels.data;
      grid = r.report.modelGrid.dims.join(" × ");
      windows = r.report.windows;
      steps = Object.entries(r.report.timings)
        .map(([k, v]) => `${k} ${fmt(v, 0)}`)
        .join(", ");
    }
    let same = 0;
    for (let i = 0; i < want.length; i++) if (labels![i] === want[i]) same++;
    const ms = median(times);
    lines[0] = lines[0]!.replace("GRID", grid).replace("WINDOWS", String(windows));
    lines.push(
      `| bhsd ${b}${b === "ts" ? " (one run)" : ""} | ${fmt(ms, 0)} | ${fmt(ref.ms / ms, 2)} | ${fmt((100 * same) / want.length, 4)} % |`,
    );
    lines.push("", `bhsd ${b}'s last run, ms a step: ${steps}`);
    model.dispose();
  }
  return lines;
}
