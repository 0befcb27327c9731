/**
 * erf(x) in double precision, for the TypeScript backend and the N-d ops (ONNX Erf, GELU).
 * Abramowitz–Stegun 7.1.26 is too coarse for float32; this is W. J. Cody's rational erf
 * (|error| < 1e-15 · scale). The coefficient tables are module constants (they were array
 * literals built on every call: GELU over UNETR's activations spent most of its time there).
 */
const P1 = [3.1611237438705655, 113.86415415105016, 377.485237685302, 3209.3775891384694, 0.18577770618460315];
const Q1 = [23.601290952344122, 244.02463793444417, 1282.6165260773723, 2844.236833439171];
const C2 = [
  0.5641884969886701, 8.883149794388377, 66.11919063714163, 298.6351381974001, 881.952221241769, 1712.0476126340707, 2051.0783778260716,
  1230.3393547979972, 2.1531153547440383e-8,
];
const D2 = [
  15.744926110709835, 117.6939508913125, 537.1811018620099, 1621.3895745666903, 3290.7992357334597, 4362.619090143247, 3439.3676741437216,
  1230.3393548037495,
];
const P3 = [
  0.30532663496123236, 0.36034489994980445, 0.12578172611122926, 0.016083785148742275, 6.587491615298378e-4, 0.016315387137302097,
];
const Q3 = [2.568520192289822, 1.8729528499234604, 0.5279051029514285, 0.06051834131244132, 0.0023352049762686918];

export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 0.5) {
    const t = x * x;
    const p = P1,
      q = Q1;
    const num = (((p[4]! * t + p[0]!) * t + p[1]!) * t + p[2]!) * t + p[3]!;
    const den = (((t + q[0]!) * t + q[1]!) * t + q[2]!) * t + q[3]!;
    return (x * num) / den;
  }
  if (ax < 4) {
    const c = C2,
      d = D2;
    let num = c[8]! * ax,
      den = ax;
    for (let i = 0; i < 7; i++) {
      num = (num + c[i]!) * ax;
      den = (den + d[i]!) * ax;
    }
    const r = (num + c[7]!) / (den + d[7]!);
    const z = Math.floor(ax * 16) / 16,
      del = (ax - z) * (ax + z);
    const v = 1 - Math.exp(-z * z) * Math.exp(-del) * r;
    return x < 0 ? -v : v;
  }
  if (ax < 27) {
    const p = P3,
      q = Q3;
    const t = 1 / (ax * ax);
    let num = p[5]! * t,
      den = t;
    for (let i = 0; i < 4; i++) {
      num = (num + p[i]!) * t;
      den = (den + q[i]!) * t;
    }
    let r = (t * (num + p[4]!)) / (den + q[4]!);
    r = (0.5641895835477563 - r) / ax;
    const z = Math.floor(ax * 16) / 16,
      del = (ax - z) * (ax + z);
    const v = 1 - Math.exp(-z * z) * Math.exp(-del) * r;
    return x < 0 ? -v : v;
  }
  return x < 0 ? -1 : Number.isNaN(x) ? NaN : 1;
}
