/**
 * renderOverlay: the PNG is decoded by fast-png (its own inflate, fflate — not the zlib pngjs
 * writes with) and known pixels are checked against concrete facts: the Okabe–Ito palette's
 * published hex values, the brain window's definition (level ± width/2 → 0..255), where a voxel
 * block must land given the affine and the radiological convention, and the letter shapes.
 */
import test from "ava";
import { decode } from "fast-png";
import { renderOverlay } from "../lib/index.js";
import { renderOverlayImage, type Panel } from "../lib/render/overlay.js";
import type { Volume } from "../lib/types.js";

// Okabe & Ito (2008), "Color Universal Design": sky blue #56B4E9, vermillion #D55E00
const SKY_BLUE = [0x56, 0xb4, 0xe9];
const VERMILLION = [0xd5, 0x5e, 0x00];

const NX = 32,
  NY = 24,
  NZ = 4;
/** A CT of 20 HU everywhere (brain window W80 L40: 255·(20 − 0)/80 = 63.75 → 64), IPH (2) in x 4..9, y 6..11 of slice 2. */
function synthetic(affine: number[], spacing: [number, number, number] = [1, 1, 1]): { ct: Volume; labels: Volume } {
  const ct = new Int16Array(NX * NY * NZ).fill(20);
  const lab = new Uint8Array(NX * NY * NZ);
  for (let y = 6; y <= 11; y++) for (let x = 4; x <= 9; x++) lab[(2 * NY + y) * NX + x] = 2;
  const geo = { dims: [NX, NY, NZ] as [number, number, number], spacing, affine };
  return { ct: { data: ct, ...geo }, labels: { data: lab, ...geo } };
}
const IDENTITY = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
// x axis negated: voxel x = 0 is the patient's rightmost column
const FLIPPED_X = [-1, 0, 0, 31, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];

function decodePng(png: Uint8Array) {
  const d = decode(png);
  const at = (x: number, y: number) => {
    const o = (y * d.width + x) * d.channels;
    return [d.data[o]!, d.data[o + 1]!, d.data[o + 2]!];
  };
  return { ...d, at };
}

/** The pixels of one colour inside a panel's image, as a bounding box and a count. */
function colourBox(img: ReturnType<typeof decodePng>, p: Panel, rgb: number[]) {
  let x0 = Infinity,
    x1 = -1,
    y0 = Infinity,
    y1 = -1,
    n = 0;
  for (let y = p.y; y < p.y + p.height; y++) {
    for (let x = p.x; x < p.x + p.width; x++) {
      const c = img.at(x, y);
      if (c[0] === rgb[0] && c[1] === rgb[1] && c[2] === rgb[2]) {
        n++;
        x0 = Math.min(x0, x - p.x);
        x1 = Math.max(x1, x - p.x);
        y0 = Math.min(y0, y - p.y);
        y1 = Math.max(y1, y - p.y);
      }
    }
  }
  return { x0, x1, y0, y1, n };
}

// The letters as drawn in 5 × 7 cells (the font's design; "#" set)
const LETTER: Record<string, string> = {
  R: "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
  L: "#....|#....|#....|#....|#....|#....|#####",
  A: ".###.|#...#|#...#|#####|#...#|#...#|#...#",
  P: "####.|#...#|#...#|####.|#....|#....|#....",
};

/** Reads the white glyph drawn in a region (font pixels are 2 × 2) back as 5 × 7 rows. */
function readLetter(img: ReturnType<typeof decodePng>, x0: number, y0: number, w: number, h: number): string {
  let bx = Infinity,
    by = Infinity;
  for (let y = y0; y < y0 + h; y++)
    for (let x = x0; x < x0 + w; x++)
      if (img.at(x, y)[0] === 255 && img.at(x, y)[1] === 255) {
        bx = Math.min(bx, x);
        by = Math.min(by, y);
      }
  if (!Number.isFinite(bx)) return "";
  const rows: string[] = [];
  for (let r = 0; r < 7; r++) {
    let s = "";
    for (let c = 0; c < 5; c++) s += img.at(bx + 2 * c, by + 2 * r)[0] === 255 ? "#" : ".";
    rows.push(s);
  }
  return rows.join("|");
}

function letters(img: ReturnType<typeof decodePng>, p: Panel) {
  const side = (x0: number) => readLetter(img, x0, p.y, 16, p.height);
  const which = (s: string) => Object.keys(LETTER).find((k) => LETTER[k] === s) ?? s;
  return {
    left: which(side(p.x - 16)),
    right: which(side(p.x + p.width)),
    top: which(readLetter(img, p.x, p.y - 18, p.width, 18)),
    bottom: which(readLetter(img, p.x, p.y + p.height, p.width, 18)),
  };
}

test("a label block gives the palette's colour at the place the affine puts it (radiological: the patient's right on the viewer's left)", async (t) => {
  const { ct, labels } = synthetic(IDENTITY);
  const r = await renderOverlayImage(ct, labels, { slices: [2], pixelMm: 0.25, bleeds: false });
  const img = decodePng(r.png);
  t.is(img.width, r.width);
  t.is(img.height, r.height);
  t.is(img.depth, 8);
  const p = r.panels[0]!;
  t.is(p.slice, 2);
  t.deepEqual([p.width, p.height], [NX * 4, NY * 4], "1 mm voxels at 0.25 mm a pixel: 4 × 4 pixels each");
  // identity affine: world x = voxel x, +x is the patient's right; radiological puts the right on the
  // left, so voxel x lands at column (31 − x)·4; anterior (+y) up: voxel y at row (23 − y)·4
  const box = colourBox(img, p, SKY_BLUE);
  t.deepEqual([box.x0, box.x1, box.y0, box.y1], [(31 - 9) * 4, (31 - 4) * 4 + 3, (23 - 11) * 4, (23 - 6) * 4 + 3]);
  t.is(box.n, 4 * 24 - 4, "the outline: the block's border pixels only, opaque");
  // inside: 35 % of the colour over the grey of 20 HU in W80 L40 (64)
  const inside = img.at(p.x + 100, p.y + 60);
  t.deepEqual(
    inside,
    SKY_BLUE.map((k) => Math.round(0.65 * 64 + 0.35 * k)),
  );
  t.deepEqual(img.at(p.x + 87, p.y + 60), [64, 64, 64], "just outside the block: the CT's grey");
  t.deepEqual(img.at(p.x + 5, p.y + 5), [64, 64, 64]);
  t.deepEqual(letters(img, p), { left: "R", right: "L", top: "A", bottom: "P" });
  // no other colour of the palette anywhere in the panel
  t.is(colourBox(img, p, VERMILLION).n, 0);
});

test("a flipped affine (x negated) shows the block on the other side, letters still true to the patient", async (t) => {
  const { ct, labels } = synthetic(FLIPPED_X);
  const r = await renderOverlayImage(ct, labels, { slices: [2], pixelMm: 0.25, bleeds: false });
  const img = decodePng(r.png);
  const p = r.panels[0]!;
  // now voxel x = 0 is the patient's rightmost: on the viewer's left, at column x·4
  const box = colourBox(img, p, SKY_BLUE);
  t.deepEqual([box.x0, box.x1, box.y0, box.y1], [4 * 4, 9 * 4 + 3, (23 - 11) * 4, (23 - 6) * 4 + 3]);
  t.deepEqual(letters(img, p), { left: "R", right: "L", top: "A", bottom: "P" });
  // neurological convention: the other way round, and its letters say so
  const n = await renderOverlayImage(ct, labels, { slices: [2], pixelMm: 0.25, bleeds: false, convention: "neurological" });
  const nimg = decodePng(n.png),
    np = n.panels[0]!;
  const nbox = colourBox(nimg, np, SKY_BLUE);
  t.deepEqual([nbox.x0, nbox.x1], [(31 - 9) * 4, (31 - 4) * 4 + 3]);
  t.deepEqual(letters(nimg, np), { left: "L", right: "R", top: "A", bottom: "P" });
  // y negated as well: anterior is still up, the block moves down
  const yflip = synthetic([-1, 0, 0, 31, 0, -1, 0, 23, 0, 0, 1, 0, 0, 0, 0, 1]);
  const y = await renderOverlayImage(yflip.ct, yflip.labels, { slices: [2], pixelMm: 0.25, bleeds: false });
  const ybox = colourBox(decodePng(y.png), y.panels[0]!, SKY_BLUE);
  t.deepEqual([ybox.x0, ybox.y0, ybox.y1], [16, 6 * 4, 11 * 4 + 3]);
});

test("pixels are millimetres: anisotropic voxels keep their shape, and the scale bar is as long as it says", async (t) => {
  const { ct, labels } = synthetic(
    IDENTITY.map((v, i) => (i === 0 ? 0.5 : v)),
    [0.5, 1, 1],
  );
  const r = await renderOverlayImage(ct, labels, { slices: [2], pixelMm: 0.25, bleeds: false });
  const img = decodePng(r.png);
  const p = r.panels[0]!;
  t.deepEqual([p.width, p.height], [NX * 2, NY * 4]);
  const box = colourBox(img, p, SKY_BLUE);
  t.is(box.x1 - box.x0 + 1, 6 * 2, "6 voxels of 0.5 mm: 3 mm, 12 pixels");
  t.is(box.y1 - box.y0 + 1, 6 * 4, "6 voxels of 1 mm: 6 mm, 24 pixels");
  // the scale bar: the longest white run in the rows under the bottom letter
  let run = 0;
  for (let y = p.y + p.height + 18; y < p.y + p.height + 36; y++) {
    let x = p.x,
      n = 0;
    while (img.at(x, y)[0] === 255 && img.at(x, y)[2] === 255) {
      n++;
      x++;
    }
    run = Math.max(run, n);
  }
  t.true([1, 2, 5, 10, 20, 50].includes(p.scaleBar.mm));
  t.is(run, p.scaleBar.mm / 0.25, `${p.scaleBar.mm} mm at 0.25 mm a pixel`);
});

test("default montage: the slices holding blood; a crop per bleed at its largest slice; the subdural window beside", async (t) => {
  const { ct, labels } = synthetic(IDENTITY);
  // a second bleed: SDH (5) over slices 0 and 1, larger on slice 1
  for (let y = 2; y <= 4; y++) for (let x = 20; x <= 28; x++) labels.data[(1 * NY + y) * NX + x] = 5;
  labels.data[(0 * NY + 3) * NX + 24] = 5;
  const r = await renderOverlayImage(ct, labels, { subdural: true });
  t.deepEqual(r.slices, [0, 1, 2]);
  const slicePanels = r.panels.filter((p) => p.kind === "slice");
  t.deepEqual(
    slicePanels.map((p) => [p.slice, p.window.name]),
    [
      [0, "brain"],
      [0, "subdural"],
      [1, "brain"],
      [1, "subdural"],
      [2, "brain"],
      [2, "subdural"],
    ],
  );
  const crops = r.panels.filter((p) => p.kind === "bleed");
  t.deepEqual(crops.map((p) => [p.slice, p.bleed!.class]).sort(), [
    [1, 5],
    [2, 2],
  ]);
  const img = decodePng(r.png);
  t.true(
    colourBox(
      img,
      crops.find((p) => p.bleed!.class === 5)!,
      VERMILLION,
    ).n > 0,
  );
  t.true(
    colourBox(
      img,
      crops.find((p) => p.bleed!.class === 2)!,
      SKY_BLUE,
    ).n > 0,
  );
  // subdural window W200 L80: 20 HU is 255·(20 − (−20))/200 = 51
  const sd = slicePanels[1]!;
  t.deepEqual(img.at(sd.x + 2, sd.y + 2), [51, 51, 51]);
  // the public function returns the same bytes
  t.deepEqual(Buffer.from(await renderOverlay(ct, labels, { subdural: true })), Buffer.from(r.png));
});

test("bad arguments are refused by name", async (t) => {
  const { ct, labels } = synthetic(IDENTITY);
  await t.throwsAsync(renderOverlay(ct, { ...labels, dims: [NX, NY, 2], data: labels.data.subarray(0, NX * NY * 2) }), {
    message: /labels\.dims \[32, 24, 2\] differ from ct\.dims \[32, 24, 4\]/,
  });
  await t.throwsAsync(renderOverlay(ct, labels, { slices: [4] }), { message: /0 to 3 for options\.slices\[0\] but received number 4/ });
  await t.throwsAsync(renderOverlay(ct, labels, { window: { width: 0, level: 40 } }), { message: /options\.window\.width/ });
  await t.throwsAsync(renderOverlay(ct, labels, { fill: 2 }), { message: /between 0 and 1 for options\.fill but received number 2/ });
  await t.throwsAsync(renderOverlay(ct, labels, { convention: "up" as "radiological" }), { message: /options\.convention/ });
  const f = new Float32Array(labels.data.length);
  f[7] = 2.5;
  await t.throwsAsync(renderOverlay(ct, { ...labels, data: f }), { message: /labels\.data\[7\] is 2\.5/ });
  await t.throwsAsync(renderOverlay(ct, null as unknown as Volume), { message: /labels/ });
});

test("many bleeds: at most maxBleeds crops (default 24), the largest first", async (t) => {
  const { ct, labels } = synthetic(IDENTITY);
  labels.data.fill(0);
  // 30 single voxels of IVH on slice 1, 2 voxels apart (never touching), and a 2 × 2 IPH block on slice 3
  for (let k = 0; k < 30; k++) labels.data[(1 * NY + 2 * Math.floor(k / 15) * 2) * NX + 2 * (k % 15)] = 3;
  for (const [x, y] of [
    [20, 20],
    [21, 20],
    [20, 21],
    [21, 21],
  ])
    labels.data[(3 * NY + y) * NX + x] = 2;
  const all = await renderOverlayImage(ct, labels);
  const crops = all.panels.filter((p) => p.kind === "bleed");
  t.is(crops.length, 24);
  t.is(crops[0]!.bleed!.class, 2, "the 4-voxel block first");
  const two = (await renderOverlayImage(ct, labels, { maxBleeds: 2 })).panels.filter((p) => p.kind === "bleed");
  t.deepEqual(
    two.map((p) => p.bleed!.class),
    [2, 3],
  );
  await t.throwsAsync(renderOverlay(ct, labels, { bleeds: [{} as never] }), { message: /options\.bleeds\[0\]/ });
  await t.throwsAsync(renderOverlay(ct, labels, { maxBleeds: -1 }), { message: /options\.maxBleeds/ });
});
