/**
 * MONAI networks from their PyTorch weights (loadMonai): UNet (residual units or plain, batch norm,
 * 2-D), SegResNet, DynUNet (residual blocks, deep-supervision heads in the state_dict) and
 * BasicUNet, each against MONAI 1.4.0's own module's output on the same input
 * (test/fixtures/monai/make.py); checkpoints as saved by torch.save — a state_dict, a
 * `{"state_dict": …}` wrapper, DataParallel's `module.` keys.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadMonai, monaiInfo, readNpy, setBackend } from "../lib/index.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "monai");
const { file: fixture, bytes } = checkedFolder(DIR);
const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  networks: Record<string, { network_def: Record<string, unknown>; input_shape: number[]; output_shape: number[]; saved_as: string }>;
};
const backends = backendsUnderTest();

for (const [name, m] of Object.entries(manifest.networks)) {
  test.serial(`${name} (${String(m.network_def._target_)}, saved as ${m.saved_as}) equals MONAI's module on every backend`, async (t) => {
    const x = await readNpy(bytes(`${name}_input.npy`));
    const want = await readNpy(bytes(`${name}_expected.npy`));
    const spatial = m.input_shape.slice(2);
    const model = await loadMonai(fixture(`${name}.pt`), { network: m.network_def, config: { patchSize: spatial as never } });
    t.is(monaiInfo(model)?.networkClass, String(m.network_def._target_).split(".").pop());
    t.is(model.config.spatialDims, spatial.length as 2 | 3);
    for (const { name: backend } of backends) {
      setBackend(backend);
      const y = await model.run({ data: x.data as Float32Array, shape: [...x.shape] });
      t.deepEqual(y.shape, m.output_shape, backend);
      const d = scaleDiff(y.data, want.data as Float32Array);
      t.true(d <= 1e-4, `${name} on ${backend}: max |difference| ${d} of max |PyTorch|`);
    }
  });
}
