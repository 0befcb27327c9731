/**
 * The demo's headline: mean Dice over the classes in the truth OR the prediction. Checked on a
 * volume whose overlaps are counted by hand: IPH 8 true voxels, 8 predicted, 4 shared (Dice
 * 2·4/16 = 0.5); EDH only in the truth (Dice 0); SDH only in the prediction (Dice 0, counted).
 */
import test from "ava";
import { evaluate } from "../lib/index.js";
import { diceHeadline } from "../lib/metrics/headline.js";
import type { Volume } from "../lib/types.js";

function vol(set: (lab: Uint8Array, at: (x: number, y: number, z: number) => number) => void): Volume {
  const dims: [number, number, number] = [16, 16, 4];
  const data = new Uint8Array(16 * 16 * 4);
  set(data, (x, y, z) => (z * 16 + y) * 16 + x);
  return { data, dims, spacing: [1, 1, 1], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] };
}

test("an invented class counts with Dice 0; the truth-only mean is kept beside it", async (t) => {
  const gt = vol((d, at) => {
    for (let x = 0; x < 8; x++) d[at(x, 2, 1)] = 2; // IPH: x 0..7
    for (let x = 0; x < 3; x++) d[at(x, 10, 2)] = 1; // EDH, never predicted
  });
  const pred = vol((d, at) => {
    for (let x = 4; x < 12; x++) d[at(x, 2, 1)] = 2; // IPH: x 4..11, 4 shared
    for (let x = 0; x < 5; x++) d[at(x, 12, 3)] = 5; // SDH where the truth has none
  });
  const m = await evaluate(gt, pred);
  t.is(m.perClass["2"]!.dice, 0.5);
  const h = diceHeadline(m);
  t.deepEqual(h.classes, [1, 2, 5]);
  t.is(h.meanDice, (0 + 0.5 + 0) / 3);
  t.deepEqual(h.truthClasses, [1, 2]);
  t.is(h.meanDiceTruth, (0 + 0.5) / 2);
  t.deepEqual(h.falsePositiveClasses, [5]);
  t.deepEqual(h.missedClasses, [1]);
  // nothing in either: no classes, no mean; a prediction on an empty truth: 0, not NaN
  const empty = diceHeadline(
    await evaluate(
      vol(() => {}),
      vol(() => {}),
    ),
  );
  t.deepEqual(empty.classes, []);
  t.true(Number.isNaN(empty.meanDice));
  const invented = diceHeadline(
    await evaluate(
      vol(() => {}),
      pred,
    ),
  );
  t.deepEqual(invented.classes, [2, 5]);
  t.is(invented.meanDice, 0);
  t.true(Number.isNaN(invented.meanDiceTruth));
  t.throws(() => diceHeadline({} as never), { message: /metrics/ });
});
