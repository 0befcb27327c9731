/**
 * One fresh process of `bench plan` (bench/plan.ts): load a model and run two 16×256×256 windows,
 * printing their times as JSON — on bhsd's native backend (with BHSD_CONV_PLAN set by the parent
 * where it measures an imported plan) or on onnxruntime-node (session creation and two runs).
 */
import ort from "onnxruntime-node";
import { exportConvPlan, loadModel, setBackend } from "../dist/index.js";
import { buildUNet, NNUNET_FULLRES } from "../dist/train/unet.js";
import { rng } from "./lib.js";
import { networkBytes, RESENC_M } from "./networks.js";

const [which, engine] = process.argv.slice(2);
const bytes = which === "resenc" ? networkBytes(RESENC_M) : buildUNet(NNUNET_FULLRES);
const shape = [1, 1, 16, 256, 256];
const r = rng(11);
const data = new Float32Array(16 * 256 * 256).map(() => r() * 2 - 1);
const times: number[] = [];
let planned = 0;
const t0 = performance.now();
if (engine === "ort") {
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
  const feed = { [session.inputNames[0]!]: new ort.Tensor("float32", data, shape) };
  for (let i = 0; i < 2; i++) {
    const t = performance.now();
    await session.run(feed);
    times.push(performance.now() - t);
  }
  await session.release();
} else {
  setBackend("native");
  planned = exportConvPlan().entries.length; // (BHSD_CONV_PLAN's plan, imported as the addon loaded)
  const model = await loadModel(bytes);
  for (let i = 0; i < 2; i++) {
    const t = performance.now();
    await model.run({ data, shape });
    times.push(performance.now() - t);
  }
}
console.log(JSON.stringify({ total: performance.now() - t0, first: times[0], second: times[1], planned }));
