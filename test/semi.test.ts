import test from "ava";
import { consistencyLoss, emaUpdate, milLoss } from "../lib/index.js";
import type { Tensor } from "../lib/types.js";
import { randomTensor } from "./ort.js";

// Gradients checked against central finite differences of the loss itself.
function numeric(f: (z: Tensor) => number, z: Tensor, i: number, h = 1e-3): number {
  const a = { data: Float32Array.from(z.data), shape: z.shape };
  const b = { data: Float32Array.from(z.data), shape: z.shape };
  a.data[i]! += h;
  b.data[i]! -= h;
  return (f(a) - f(b)) / (2 * h);
}

test("multiple-instance loss: the value by hand, and the gradient by finite differences", (t) => {
  const z = randomTensor([2, 3, 3, 2, 2], 8);
  for (let i = 0; i < z.data.length; i++) z.data[i] = z.data[i]! * 2;
  const present = [
    [
      [true, false],
      [false, false],
      [true, true],
    ],
    [
      [false, true],
      [true, false],
      [false, false],
    ],
  ];
  const r = milLoss(z, present);
  // by hand: q = slice max of softmax per class
  const S = 12,
    plane = 4;
  let want = 0;
  for (let n = 0; n < 2; n++)
    for (let zz = 0; zz < 3; zz++)
      for (let c = 1; c < 3; c++) {
        let q = 0;
        for (let i = 0; i < plane; i++) {
          const v = (k: number) => Math.exp(z.data[(n * 3 + k) * S + zz * plane + i]!);
          q = Math.max(q, v(c) / (v(0) + v(1) + v(2)));
        }
        const s = present[n]![zz]![c - 1] ? 1 : 0;
        want -= s * Math.log(q) + (1 - s) * Math.log(1 - q);
      }
  t.true(Math.abs(r.loss - want / 12) < 1e-6, `${r.loss} vs ${want / 12}`);
  for (const i of [0, 5, 13, 29, 40, 55, 71]) {
    const num = numeric((x) => milLoss(x, present).loss, z, i);
    t.true(Math.abs(num - r.dlogits.data[i]!) < 2e-3 * Math.max(1, Math.abs(num)), `element ${i}: ${r.dlogits.data[i]} vs ${num}`);
  }
});

test("mean-teacher consistency: gradient by finite differences, and the EMA", (t) => {
  const s = randomTensor([1, 4, 2, 3, 3], 1),
    te = randomTensor([1, 4, 2, 3, 3], 2);
  const r = consistencyLoss(s, te);
  t.true(r.loss > 0);
  t.is(consistencyLoss(te, te).loss, 0);
  for (const i of [0, 7, 18, 33, 50, 71]) {
    const num = numeric((x) => consistencyLoss(x, te).loss, s, i, 1e-2);
    t.true(Math.abs(num - r.dlogits.data[i]!) < 1e-4, `element ${i}: ${r.dlogits.data[i]} vs ${num}`);
  }
  const teacher = Float32Array.of(1, 2),
    student = Float32Array.of(3, 0);
  emaUpdate(teacher, student, 0.9);
  t.true(Math.abs(teacher[0]! - 1.2) < 1e-6 && Math.abs(teacher[1]! - 1.8) < 1e-6);
});
