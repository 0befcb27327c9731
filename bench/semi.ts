/**
 * The BHSD semi-supervised question on phantoms (`npm run bench semi`, tens of minutes): do 40
 * cases with slice-level labels only, added to 8 with voxel labels, raise the Dice on held-out
 * cases? Two runs from the same initial weights and seed, the same number of steps and the same
 * supervised batches: supervised on the 8 alone, and the 8 plus the 40 through the
 * multiple-instance loss and mean-teacher consistency (lib/train/trainer.ts). Phantoms as the demo
 * model's (128×128×24 at 1.8×1.8×5 mm); slice-labelled patches are whole slices (8×128×128).
 */
import { makePhantom, setBackend, backendInfo, slicePresence } from "../dist/index.js";
import { train, validationDice } from "../dist/train/trainer.js";

const STEPS = Number(process.env.BHSD_SEMI_STEPS ?? 300);
/** Weights of the semi-supervised terms (BHSD_SEMI_MIL, BHSD_SEMI_CONSISTENCY; default 1 and 1). */
const MIL = Number(process.env.BHSD_SEMI_MIL ?? 1),
  CONSISTENCY = Number(process.env.BHSD_SEMI_CONSISTENCY ?? 1);
/** BHSD_SEMI_ONLY=semi skips the supervised run (to try other weights against a baseline already measured). */
const ONLY = process.env.BHSD_SEMI_ONLY;

export async function benchSemi(): Promise<string[]> {
  setBackend(backendInfo().available.native ? "native" : "ts");
  const opt = { dims: [128, 128, 24] as [number, number, number], spacing: [1.8, 1.8, 5] as [number, number, number] };
  const voxel = Array.from({ length: 8 }, (_, i) => makePhantom(1000 + i, opt)).map((p) => ({ ct: p.ct, labels: p.labels }));
  const slices = Array.from({ length: 40 }, (_, i) => makePhantom(2000 + i, opt)).map((p) => ({
    ct: p.ct,
    slices: slicePresence(p.labels).present,
  }));
  const test = Array.from({ length: 8 }, (_, i) => makePhantom(3000 + i, opt)).map((p) => ({ ct: p.ct, labels: p.labels }));
  const common = {
    train: voxel,
    steps: STEPS,
    batch: 2,
    patch: [16, 64, 64] as [number, number, number],
    lr: 0.003,
    foreground: 0.5,
    batchDice: true,
    seed: 5,
  };
  const rows: string[] = [];
  for (const [name, extra] of [
    ["8 voxel-labelled (supervised)", {}],
    [
      `8 voxel-labelled + 40 slice-labelled (MIL ×${MIL} + mean teacher ×${CONSISTENCY})`,
      { semi: { cases: slices, batch: 1, mil: MIL, consistency: CONSISTENCY } },
    ],
  ] as const) {
    if (ONLY === "semi" && !("semi" in extra)) continue;
    const t0 = performance.now();
    const r = await train({ ...common, ...extra });
    const s = (performance.now() - t0) / 1000;
    const dice = await validationDice(r.onnx, r.config, test);
    const last = r.history.slice(-20);
    const mean = (f: (h: (typeof last)[number]) => number | undefined) => last.reduce((a, h) => a + (f(h) ?? 0), 0) / last.length;
    rows.push(
      `| ${name} | ${STEPS} | ${s.toFixed(0)} | ${mean((h) => h.loss).toFixed(3)} | ${"mil" in extra || "semi" in extra ? `${mean((h) => h.mil).toFixed(3)} / ${mean((h) => h.consistency).toFixed(4)}` : "–"} | ${dice.toFixed(3)} |`,
    );
    console.error(rows[rows.length - 1]);
  }
  return [
    `semi-supervised training on phantoms (${new Date().toISOString().slice(0, 10)}); held-out Dice = mean over the classes present in 8 unseen phantoms`,
    "| training data | steps | s | supervised loss (last 20) | MIL / consistency (last 20) | held-out Dice |",
    "| --- | --- | --- | --- | --- | --- |",
    ...rows,
  ];
}
