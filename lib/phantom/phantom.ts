/**
 * Synthetic head CTs with known hemorrhages: the project's own honest default where no BHSD data
 * can be had. Seeded and deterministic. Anatomy in millimetres about the head's centre: air,
 * scalp, skull (700–1500 HU), CSF between skull and brain, grey (≈ 40 HU) and white (≈ 25 HU)
 * matter, lateral ventricles and sulci (CSF ≈ 5 HU); acute blood (50–90 HU) shaped as each class
 * looks: EDH a biconvex lens against the skull, SDH a thin crescent along it, IPH an irregular blob
 * in the parenchyma, IVH layering in a ventricle, SAH thin in sulci, the Sylvian fissures and the
 * basal cisterns. Each voxel averages what it covers (partial volume: three sub-slices of its
 * thick slice, and a 3 × 3 in-plane grid where it straddles an edge) and is labelled with the class
 * that fills most of it; then the in-plane point spread (≈ 1 mm FWHM, in mm, whatever the voxel
 * size) and noise. The labels are what an annotator can see: a voxel that bone brightens past the
 * top of the BHSD window (120 HU before noise) reads as skull, not blood, and is not labelled.
 */
import { prng } from "../random.js";
import type { Volume } from "../types.js";

/** The top of the BHSD window: a voxel brighter than this (before noise) is not labelled as blood. */
export const VISIBLE_BLOOD_MAX_HU = 120;

export interface PhantomOptions {
  /** [nx, ny, nz] voxels (default 256 × 256 × 32). */
  dims?: [number, number, number];
  /** [sx, sy, sz] mm (default 0.9 × 0.9 × 5). */
  spacing?: [number, number, number];
  /** Noise σ in HU (default 6). */
  noiseHu?: number;
  /** Probability that a case has no bleed at all (default 0.15). */
  pNone?: number;
}

export interface Phantom {
  ct: Volume<Int16Array>;
  labels: Volume<Uint8Array>;
  /** The classes painted into this case. */
  classes: number[];
}

interface Blob {
  c: [number, number, number];
  r: number;
}

export function makePhantom(seed: number, options: PhantomOptions = {}): Phantom {
  const [nx, ny, nz] = options.dims ?? [256, 256, 32];
  const [sx, sy, sz] = options.spacing ?? [0.9, 0.9, 5];
  const rnd = prng(seed * 2654435761 + 1);
  const uni = (a: number, b: number) => a + (b - a) * rnd();
  // head: ellipsoid semi-axes (mm); the volume covers it with some air around
  const hx = Math.min(78, (nx * sx) / 2 - 8) * uni(0.92, 1),
    hy = Math.min(95, (ny * sy) / 2 - 8) * uni(0.92, 1);
  const hz = Math.max(40, (nz * sz) / 2 + 10);
  const scalp = 5,
    skull = uni(5, 8),
    csfGap = uni(1, 2.5);
  const boneHu = uni(900, 1300);
  // ventricles: two ellipsoids either side of the midline
  const vent = [-1, 1].map((side) => ({
    c: [side * uni(7, 10), uni(-6, 6), uni(-5, 10)] as [number, number, number],
    a: [uni(4, 6), uni(16, 22), uni(10, 16)] as [number, number, number],
  }));
  // sulci: thin radial slits near the cortex, by angle and height
  const sulci = Array.from({ length: 18 }, () => ({
    th: uni(0, 2 * Math.PI),
    z: uni(-hz * 0.6, hz * 0.6),
    half: uni(0.7, 1.4),
    depth: uni(8, 18),
  }));
  // Sylvian fissures: a deep slit from each side's surface towards the centre, low in the head;
  // basal cisterns: a CSF ring around the midbrain below the ventricles
  const sylv = [-1, 1].map((side) => ({
    side,
    y: uni(-12, 0),
    z: uni(-hz * 0.35, -hz * 0.1),
    half: uni(1.2, 2),
    depth: uni(22, 32),
    tilt: uni(-0.25, 0.25),
  }));
  const cistern = {
    c: [0, uni(-4, 8), uni(-hz * 0.55, -hz * 0.35)] as [number, number, number],
    r: uni(9, 13),
    w: uni(2.5, 4),
    h: uni(8, 12),
  };

  // which classes bleed
  const classes: number[] = [];
  if (rnd() >= (options.pNone ?? 0.15)) {
    for (const c of [1, 2, 3, 4, 5]) if (rnd() < 0.45) classes.push(c);
    if (!classes.length) classes.push(1 + Math.floor(rnd() * 5));
  }
  const bloodHu = () => uni(55, 85);
  // EDH: a short thick lens at angle th, height z, radius R (15–26 mm), thickness T (8–15 mm);
  // SDH: a wide thin crescent (R 40–60 mm, T 4–8 mm)
  const edh = classes.includes(1)
    ? { th: uni(0, 2 * Math.PI), z: uni(-hz * 0.4, hz * 0.4), R: uni(15, 26), T: uni(8, 15), hu: bloodHu() }
    : null;
  const sdh = classes.includes(5)
    ? { th: uni(0, 2 * Math.PI), z: uni(-hz * 0.3, hz * 0.3), R: uni(40, 60), T: uni(4, 8), hu: bloodHu() }
    : null;
  // IPH: 2–4 spheres near a point inside the white matter
  const iph: Blob[] = [];
  if (classes.includes(2)) {
    const c0: [number, number, number] = [uni(-0.45, 0.45) * hx, uni(-0.45, 0.45) * hy, uni(-0.35, 0.35) * hz];
    for (let k = 0, n = 2 + Math.floor(rnd() * 3); k < n; k++)
      iph.push({ c: [c0[0] + uni(-6, 6), c0[1] + uni(-6, 6), c0[2] + uni(-5, 5)], r: uni(5, 11) });
  }
  const iphHu = bloodHu();
  const ivh = classes.includes(3) ? { v: Math.floor(rnd() * 2), level: uni(-0.2, 0.5), hu: bloodHu() } : null;
  // SAH fills some sulci, often a Sylvian fissure, sometimes the basal cisterns (at least one of them)
  const sah = classes.includes(4)
    ? { which: sulci.map(() => rnd() < 0.45), sylv: sylv.map(() => rnd() < 0.6), cistern: rnd() < 0.5, hu: bloodHu() }
    : null;
  if (sah && !sah.sylv.some(Boolean) && !sah.cistern) sah.sylv[Math.floor(rnd() * 2)] = true;

  const ex = (x: number, y: number, z: number, a: number, b: number, c: number) => (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2;
  // One sample: HU, label and a tissue code (for finding edges) at a point (mm about the centre).
  // sample() leaves its answer here (no array per call: millions of calls per phantom)
  let sHu = 0,
    sLab = 0,
    sTis = 0;
  const R = (h: number, l: number, t: number) => {
    sHu = h;
    sLab = l;
    sTis = t;
  };
  const sample = (x: number, y: number, z: number): void => {
    const rOut = Math.sqrt(ex(x, y, z, hx, hy, hz)); // 1 on the scalp's outer surface
    if (rOut > 1) return R(-1000, 0, 1);
    // approximate depth (mm) below the outer surface along the ellipsoid's normal scale
    const meanAxis = (hx + hy) / 2;
    const depth = (1 - rOut) * meanAxis;
    if (depth < scalp) return R(uni(30, 50), 0, 2);
    if (depth < scalp + skull) return R(boneHu + uni(-150, 150), 0, 3);
    const inner = depth - scalp - skull; // depth below the inner skull surface
    const th = Math.atan2(y / hy, x / hx);
    // extra-axial collections lie against the inner skull
    const angDist = (t0: number, zc: number) => {
      const d = Math.abs(((th - t0 + 3 * Math.PI) % (2 * Math.PI)) - Math.PI) * meanAxis;
      return Math.sqrt(d * d + (z - zc) * (z - zc));
    };
    if (edh) {
      const d = angDist(edh.th, edh.z);
      if (d < edh.R && inner < edh.T * (1 - (d / edh.R) ** 2)) return R(edh.hu, 1, 4);
    }
    if (sdh) {
      const d = angDist(sdh.th, sdh.z);
      if (d < sdh.R && inner < sdh.T * (1 - (d / sdh.R) ** 4)) return R(sdh.hu, 5, 5);
    }
    if (inner < csfGap) return R(5, 0, 6);
    // (index loops and plain arithmetic: this runs millions of times per phantom)
    for (let k = 0; k < vent.length; k++) {
      const v = vent[k]!;
      if (ex(x - v.c[0], y - v.c[1], z - v.c[2], v.a[0], v.a[1], v.a[2]) <= 1) {
        if (ivh && ivh.v === k && (y - v.c[1]) / v.a[1] > ivh.level) return R(ivh.hu, 3, 7);
        return R(5, 0, 6);
      }
    }
    for (let k = 0; k < sylv.length; k++) {
      const f = sylv[k]!;
      // a slit in the y–z plane's neighbourhood: |y − y0 − tilt·x| < half, reaching depth mm inwards from the side
      if (
        Math.abs(z - f.z) < 9 &&
        Math.sign(x) === f.side &&
        Math.abs(x) > hx - scalp - skull - f.depth &&
        Math.abs(y - f.y - f.tilt * x) < f.half
      )
        return sah && sah.sylv[k] ? R(sah.hu, 4, 8) : R(5, 0, 6);
    }
    {
      const dr = Math.sqrt((x - cistern.c[0]) ** 2 + ((y - cistern.c[1]) * 0.8) ** 2);
      if (Math.abs(z - cistern.c[2]) < cistern.h / 2 && dr > cistern.r && dr < cistern.r + cistern.w)
        return sah && sah.cistern ? R(sah.hu, 4, 8) : R(5, 0, 6);
    }
    for (let k = 0; k < sulci.length; k++) {
      const s = sulci[k]!;
      if (inner - csfGap > s.depth || Math.abs(z - s.z) > 12) continue;
      const d = Math.abs(((th - s.th + 3 * Math.PI) % (2 * Math.PI)) - Math.PI) * meanAxis;
      if (d < s.half) return sah && sah.which[k] ? R(sah.hu, 4, 8) : R(5, 0, 6);
    }
    for (const b of iph) if ((x - b.c[0]) ** 2 + (y - b.c[1]) ** 2 + (z - b.c[2]) ** 2 <= b.r * b.r) return R(iphHu, 2, 9);
    // grey matter outside a white-matter core
    return rOut > 0.78 ? R(40, 0, 10) : R(25, 0, 11);
  };

  const n = nx * ny * nz;
  const hu = new Float32Array(n);
  const labels = new Uint8Array(n);
  // A voxel's value is the mean over its whole extent (partial volume) and its label the class
  // that fills most of it; in-plane the scanner's point spread (≈ 1 mm FWHM) is applied after.
  // Pass 1 samples each voxel's centre line at three sub-slices; pass 2 resamples on a 3 × 3
  // in-plane grid only where the tissue differs from a neighbour's (edges), so that a homogeneous
  // voxel costs three samples and an edge twenty-seven.
  const sub = [-1 / 3, 0, 1 / 3];
  const tissue = new Int32Array(n);
  const ls = [0, 0, 0]; // the three sub-slices' labels (one array for all voxels)
  for (let k = 0; k < nz; k++) {
    for (let j = 0; j < ny; j++) {
      const y = (j - (ny - 1) / 2) * sy;
      for (let i = 0; i < nx; i++) {
        const x = (i - (nx - 1) / 2) * sx;
        let acc = 0,
          code = 0;
        for (let q = 0; q < 3; q++) {
          sample(x, y, (k - (nz - 1) / 2 + sub[q]!) * sz);
          acc += sHu;
          ls[q] = sLab;
          code = code * 16 + sTis;
        }
        const idx = (k * ny + j) * nx + i;
        hu[idx] = acc / 3;
        // at least two of the three sub-slices (blood a thin slice barely grazes is not blood)
        labels[idx] = ls[0] === ls[1] || ls[0] === ls[2] ? ls[0]! : ls[1] === ls[2] ? ls[1]! : 0;
        tissue[idx] = code;
      }
    }
  }
  const votes = new Int32Array(6);
  for (let k = 0; k < nz; k++) {
    for (let j = 0; j < ny; j++) {
      for (let i = 0; i < nx; i++) {
        const idx = (k * ny + j) * nx + i,
          t0 = tissue[idx]!;
        const edge =
          (i > 0 && tissue[idx - 1] !== t0) ||
          (i < nx - 1 && tissue[idx + 1] !== t0) ||
          (j > 0 && tissue[idx - nx] !== t0) ||
          (j < ny - 1 && tissue[idx + nx] !== t0);
        if (!edge) continue;
        let acc = 0;
        votes.fill(0);
        for (let b = 0; b < 3; b++) {
          const y = (j - (ny - 1) / 2 + sub[b]!) * sy;
          for (let a = 0; a < 3; a++) {
            const x = (i - (nx - 1) / 2 + sub[a]!) * sx;
            for (let q = 0; q < 3; q++) {
              sample(x, y, (k - (nz - 1) / 2 + sub[q]!) * sz);
              acc += sHu;
              votes[sLab]!++;
            }
          }
        }
        hu[idx] = acc / 27;
        // the class that fills most of the voxel; a tie goes to the class at its centre
        let best = labels[idx]!;
        for (let c = 0; c < 6; c++) if (votes[c]! > votes[best]!) best = c;
        labels[idx] = best;
      }
    }
  }
  // in-plane point spread: a Gaussian of σ = 0.45 mm (≈ 1.06 mm FWHM, a soft-tissue kernel's),
  // as three taps per axis at this spacing; then noise
  const taps = (s: number) => {
    const w = Math.exp(-1 / (2 * (0.45 / s) ** 2));
    return [w / (1 + 2 * w), 1 / (1 + 2 * w)] as const;
  };
  const [wx1, wx0] = taps(sx),
    [wy1, wy0] = taps(sy);
  const tmp = new Float32Array(n);
  for (let k = 0; k < nz; k++)
    for (let j = 0; j < ny; j++)
      for (let i = 0; i < nx; i++) {
        const o = (k * ny + j) * nx + i;
        tmp[o] = wx1 * (hu[o - (i > 0 ? 1 : 0)]! + hu[o + (i < nx - 1 ? 1 : 0)]!) + wx0 * hu[o]!;
      }
  const sigma = options.noiseHu ?? 6;
  const ct = new Int16Array(n);
  for (let k = 0; k < nz; k++)
    for (let j = 0; j < ny; j++)
      for (let i = 0; i < nx; i++) {
        const o = (k * ny + j) * nx + i;
        const v = wy1 * (tmp[o - (j > 0 ? nx : 0)]! + tmp[o + (j < ny - 1 ? nx : 0)]!) + wy0 * tmp[o]!;
        // blood that shares a voxel with enough bone shows white in the window annotators read
        // (−40…120 HU): such a voxel is skull to them (and to any model), so it is not labelled
        if (labels[o] && v > VISIBLE_BLOOD_MAX_HU) labels[o] = 0;
        const g = Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
        ct[o] = Math.max(-1024, Math.min(3071, Math.round(v + (v > -900 ? g * sigma : 0))));
      }
  const affine = [sx, 0, 0, (-(nx - 1) / 2) * sx, 0, sy, 0, (-(ny - 1) / 2) * sy, 0, 0, sz, (-(nz - 1) / 2) * sz, 0, 0, 0, 1];
  const geo = { dims: [nx, ny, nz] as [number, number, number], spacing: [sx, sy, sz] as [number, number, number], affine };
  const present = [1, 2, 3, 4, 5].filter((c) => labels.includes(c));
  return { ct: { data: ct, ...geo }, labels: { data: labels, ...geo, affine: [...affine] }, classes: present };
}
