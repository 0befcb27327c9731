/**
 * renderOverlay(ct, labels, options) → PNG bytes: axial slices of a head CT in a display window
 * with each class's voxels filled and outlined in a fixed colour-blind-safe colour (Okabe–Ito), a
 * legend, orientation letters taken from the affine, a scale bar in mm; a montage of the slices
 * that hold blood, and a crop of each bleed through its largest slice with its volume and ABC/2.
 *
 * Orientation: the slice is turned so that the patient's right is on the viewer's left
 * (radiological convention, as CT is read; `convention: "neurological"` puts it on the right) and
 * anterior is up, whatever order the voxels are stored in: the affine decides, so a volume stored
 * left-to-right and one stored right-to-left show the same picture. The letters at the edges name
 * the patient's side each edge faces (R/L, A/P; S/I for slices that are not axial).
 */
import { connectedComponents, componentStats, type Component } from "../ops/components.js";
import { assertNumber, dtypeOf, invalidParameterError, optionsObject } from "../is.js";
import { BHSD_CLASSES } from "../metrics/evaluate.js";
import type { Volume } from "../types.js";
import { assertVolume } from "../volume.js";
import { Canvas, type Rgb } from "./canvas.js";
import { ADVANCE, GLYPH_H, textWidth } from "./font.js";

/** A display window in Hounsfield units: `level` ± `width` / 2 spans black to white. */
export interface DisplayWindow {
  width: number;
  level: number;
  name?: string;
}

export const BRAIN_WINDOW: Readonly<DisplayWindow> = { name: "brain", width: 80, level: 40 };
export const SUBDURAL_WINDOW: Readonly<DisplayWindow> = { name: "subdural", width: 200, level: 80 };

/**
 * The colour of each class: the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"),
 * told apart by the common colour-vision deficiencies. Labels past 5 take the two colours left.
 */
export const CLASS_COLORS: Readonly<Record<number, Rgb>> = {
  1: [0xe6, 0x9f, 0x00], // EDH orange
  2: [0x56, 0xb4, 0xe9], // IPH sky blue
  3: [0x00, 0x9e, 0x73], // IVH bluish green
  4: [0xf0, 0xe4, 0x42], // SAH yellow
  5: [0xd5, 0x5e, 0x00], // SDH vermillion
};
const EXTRA_COLORS: Rgb[] = [
  [0xcc, 0x79, 0xa7],
  [0x00, 0x72, 0xb2],
];

export function classColor(c: number): Rgb {
  return CLASS_COLORS[c] ?? EXTRA_COLORS[(c - 6) % EXTRA_COLORS.length] ?? EXTRA_COLORS[0]!;
}

/** The hex form of a class colour, for HTML. */
export function classColorHex(c: number): string {
  return (
    "#" +
    classColor(c)
      .map((v) => v.toString(16).padStart(2, "0"))
      .join("")
  );
}

export interface OverlayOptions {
  /** Axial slices (z indices) to show; default every slice holding a label, or the middle slice when none does. */
  slices?: number[];
  /** Display window(s); each slice is shown once per window, side by side. Default the brain window (W 80 L 40). */
  window?: DisplayWindow | DisplayWindow[];
  /** Add the subdural window (W 200 L 80) after the given ones. Default false. */
  subdural?: boolean;
  /** Cells per montage row (default 4). */
  columns?: number;
  /** Size of a display pixel in mm (default: the slice's longer side over 256 pixels). */
  pixelMm?: number;
  /** Opacity of the class fill, 0..1 (default 0.35); outlines are opaque. */
  fill?: number;
  /** Per-bleed crops: true (default) measures the bleeds here; a list (e.g. segment's report.components) uses those; false none. */
  bleeds?: boolean | Component[];
  /** Class names for the legend and captions (default BHSD's). */
  classes?: Record<number, string>;
  /** A line of text at the top. */
  title?: string;
  /** "radiological" (default; the patient's right on the viewer's left) or "neurological". */
  convention?: "radiological" | "neurological";
  /** At most this many slices in the montage (default 64; more are thinned evenly and the header says so). */
  maxSlices?: number;
  /** At most this many bleed crops, the largest first (default 24; the header says how many of how many). */
  maxBleeds?: number;
}

/** Where one slice or crop was drawn and how it was oriented. */
export interface Panel {
  kind: "slice" | "bleed";
  /** z index of the slice. */
  slice: number;
  window: DisplayWindow;
  /** The image's top-left pixel and size in the picture. */
  x: number;
  y: number;
  width: number;
  height: number;
  pixelMm: number;
  /** Voxel axes shown across (h) and down (v), whether each runs against the screen, and the voxel ranges shown. */
  axes: { h: 0 | 1; v: 0 | 1; flipH: boolean; flipV: boolean; hRange: [number, number]; vRange: [number, number] };
  /** The patient side each edge faces. */
  letters: { left: string; right: string; top: string; bottom: string };
  scaleBar: { mm: number; px: number };
  /** For crops: the bleed's label and class. */
  bleed?: { label: number; class: number };
}

export interface OverlayImage {
  png: Uint8Array;
  width: number;
  height: number;
  panels: Panel[];
  /** The slices shown in the montage. */
  slices: number[];
}

const TEXT = 2; // font scale
const LINE = GLYPH_H * TEXT + 4; // 18 px a line of text
const MARGIN = 16; // beside each image, for the letters
const GAP = 8;
const WHITE: Rgb = [255, 255, 255];
const GREY: Rgb = [170, 170, 170];
const BG: Rgb = [0, 0, 0];

const WORLD_CODES = [
  ["L", "R"],
  ["P", "A"],
  ["I", "S"],
] as const;

interface Orientation {
  h: 0 | 1;
  v: 0 | 1;
  flipH: boolean;
  flipV: boolean;
  letters: Panel["letters"];
}

/**
 * How to show the in-plane voxel axes: each voxel axis goes along the world axis its affine column
 * points to most; the one along world x goes across the screen, turned so the patient's right is
 * on the viewer's left (radiological) or right (neurological); the other goes down, turned so that
 * anterior (or superior) is up.
 */
export function sliceOrientation(affine: readonly number[], convention: "radiological" | "neurological" = "radiological"): Orientation {
  const col = (a: number) => [affine[a]!, affine[4 + a]!, affine[8 + a]!];
  const dominant = (d: number[], not = -1) => {
    let best = -1;
    for (let w = 0; w < 3; w++) if (w !== not && (best < 0 || Math.abs(d[w]!) > Math.abs(d[best]!))) best = w;
    return best;
  };
  const d0 = col(0),
    d1 = col(1);
  let w0 = dominant(d0),
    w1 = dominant(d1);
  if (w0 === w1) {
    // an oblique plane pointing both axes at one world axis: the weaker one takes its next best
    if (Math.abs(d0[w0]!) >= Math.abs(d1[w1]!)) w1 = dominant(d1, w0);
    else w0 = dominant(d0, w1);
  }
  const swap = w1 === 0 && w0 !== 0;
  const h = (swap ? 1 : 0) as 0 | 1,
    v = (swap ? 0 : 1) as 0 | 1;
  const wh = swap ? w1 : w0,
    wv = swap ? w0 : w1;
  const sh = Math.sign((swap ? d1 : d0)[wh]!) || 1,
    sv = Math.sign((swap ? d0 : d1)[wv]!) || 1;
  // the world direction (sign along wh) the screen's x should run to
  const wantH = wh === 0 ? (convention === "radiological" ? -1 : 1) : 1;
  const flipH = sh !== wantH,
    flipV = sv !== -1;
  const code = (w: number, s: number) => WORLD_CODES[w]![s > 0 ? 1 : 0]!;
  const right = sh * (flipH ? -1 : 1),
    down = sv * (flipV ? -1 : 1);
  return { h, v, flipH, flipV, letters: { left: code(wh, -right), right: code(wh, right), top: code(wv, -down), bottom: code(wv, down) } };
}

function assertPositive(name: string, v: unknown): asserts v is number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw invalidParameterError(name, "a positive number", v);
}

function checkWindow(name: string, w: unknown): DisplayWindow {
  const o = optionsObject(name, w) as Partial<DisplayWindow>;
  assertPositive(`${name}.width`, o.width);
  assertNumber(`${name}.level`, o.level);
  if (o.name !== undefined && typeof o.name !== "string") throw invalidParameterError(`${name}.name`, "a string", o.name);
  return { width: o.width!, level: o.level!, ...(o.name ? { name: o.name } : {}) };
}

function windowLabel(w: DisplayWindow): string {
  const n = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
  return `${w.name ? w.name + " " : ""}W${n(w.width)} L${n(w.level)}`;
}

/** Labels as small integers per voxel, refusing anything that is not a whole number 0..255 (naming value and voxel). */
function labelArray(labels: Volume): Uint8Array {
  if (labels.data instanceof Uint8Array) return labels.data;
  const out = new Uint8Array(labels.data.length);
  const d = labels.data;
  for (let i = 0; i < d.length; i++) {
    const x = d[i]!;
    if (!(x >= 0 && x <= 255 && Number.isInteger(x))) {
      throw new RangeError(`labels.data[${i}] is ${x}: expected a whole-number label from 0 to 255`);
    }
    out[i] = x;
  }
  return out;
}

interface Prepared {
  ct: Volume;
  lab: Uint8Array;
  dims: [number, number, number];
  orient: Orientation;
  spacing: [number, number, number];
  fill: number;
}

/** Draws one slice region into `canvas` at (x, y), size w × h pixels of `p` mm. */
function drawSlice(
  canvas: Canvas,
  x: number,
  y: number,
  P: Prepared,
  z: number,
  win: DisplayWindow,
  hr: [number, number],
  vr: [number, number],
  p: number,
  w: number,
  h: number,
): void {
  const { orient: o, dims, spacing } = P;
  const [nx, ny] = dims;
  const sh = spacing[o.h],
    sv = spacing[o.v];
  const nh = hr[1] - hr[0] + 1,
    nv = vr[1] - vr[0] + 1;
  const idx = new Int32Array(w * h);
  const hi = new Int32Array(w),
    vi = new Int32Array(h);
  for (let u = 0; u < w; u++) {
    const t = Math.min(nh - 1, Math.floor(((u + 0.5) * p) / sh));
    hi[u] = o.flipH ? hr[1] - t : hr[0] + t;
  }
  for (let v = 0; v < h; v++) {
    const t = Math.min(nv - 1, Math.floor(((v + 0.5) * p) / sv));
    vi[v] = o.flipV ? vr[1] - t : vr[0] + t;
  }
  const base = z * nx * ny;
  for (let v = 0; v < h; v++) {
    for (let u = 0; u < w; u++) {
      const ix = o.h === 0 ? hi[u]! : vi[v]!,
        iy = o.h === 0 ? vi[v]! : hi[u]!;
      idx[v * w + u] = base + iy * nx + ix;
    }
  }
  const lo = win.level - win.width / 2;
  const lab = (u: number, v: number) => (u < 0 || v < 0 || u >= w || v >= h ? -1 : P.lab[idx[v * w + u]!]!);
  for (let v = 0; v < h; v++) {
    for (let u = 0; u < w; u++) {
      const hu = P.ct.data[idx[v * w + u]!]!;
      const g = Math.round(255 * Math.min(1, Math.max(0, (hu - lo) / win.width)));
      const L = lab(u, v);
      let c: Rgb = [g, g, g];
      if (L > 0) {
        const k = classColor(L);
        const edge = lab(u - 1, v) !== L || lab(u + 1, v) !== L || lab(u, v - 1) !== L || lab(u, v + 1) !== L;
        c = edge ? k : ([0, 1, 2].map((i) => Math.round((1 - P.fill) * g + P.fill * k[i]!)) as unknown as Rgb);
      }
      canvas.set(x + u, y + v, c);
    }
  }
}

const NICE_MM = [1, 2, 5, 10, 20, 50, 100, 200];

function scaleBar(p: number, w: number): { mm: number; px: number } {
  let mm = NICE_MM[0]!;
  for (const m of NICE_MM) if (m / p <= w / 3) mm = m;
  return { mm, px: Math.max(1, Math.round(mm / p)) };
}

interface CellSpec {
  kind: "slice" | "bleed";
  z: number;
  win: DisplayWindow;
  hr: [number, number];
  vr: [number, number];
  p: number;
  w: number;
  h: number;
  header: string;
  captions: string[];
  bleed?: { label: number; class: number };
}

function cellSize(c: CellSpec): { w: number; h: number } {
  const textW = Math.max(textWidth(c.header, TEXT), ...c.captions.map((s) => textWidth(s, TEXT))) + 4;
  return { w: Math.max(c.w + 2 * MARGIN, textW), h: LINE * 2 + c.h + LINE * 2 + LINE * c.captions.length };
}

function drawCell(canvas: Canvas, x: number, y: number, c: CellSpec, P: Prepared): Panel {
  canvas.text(x + 2, y + 2, c.header, WHITE, TEXT);
  const ix = x + MARGIN,
    iy = y + 2 * LINE;
  drawSlice(canvas, ix, iy, P, c.z, c.win, c.hr, c.vr, c.p, c.w, c.h);
  const L = P.orient.letters;
  const gw = (ADVANCE - 1) * TEXT,
    gh = GLYPH_H * TEXT;
  canvas.text(ix + Math.floor((c.w - gw) / 2), iy - LINE + 2, L.top, WHITE, TEXT);
  canvas.text(ix + Math.floor((c.w - gw) / 2), iy + c.h + 2, L.bottom, WHITE, TEXT);
  canvas.text(x + Math.floor((MARGIN - gw) / 2), iy + Math.floor((c.h - gh) / 2), L.left, WHITE, TEXT);
  canvas.text(ix + c.w + Math.floor((MARGIN - gw) / 2), iy + Math.floor((c.h - gh) / 2), L.right, WHITE, TEXT);
  const bar = scaleBar(c.p, c.w);
  const by = iy + c.h + LINE;
  canvas.fill(ix, by + 6, bar.px, 4, WHITE);
  canvas.text(ix + bar.px + 6, by + 2, `${bar.mm} mm`, WHITE, TEXT);
  c.captions.forEach((s, i) => canvas.text(x + 2, by + LINE * (i + 1) + 2, s, WHITE, TEXT));
  const o = P.orient;
  return {
    kind: c.kind,
    slice: c.z,
    window: c.win,
    x: ix,
    y: iy,
    width: c.w,
    height: c.h,
    pixelMm: c.p,
    axes: { h: o.h, v: o.v, flipH: o.flipH, flipV: o.flipV, hRange: c.hr, vRange: c.vr },
    letters: { ...o.letters },
    scaleBar: bar,
    ...(c.bleed ? { bleed: c.bleed } : {}),
  };
}

const fmtMl = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

/** The overlay as a PNG and where each panel went (for tests and for pages that point into it). */
export async function renderOverlayImage(ct: Volume, labels: Volume, options?: OverlayOptions): Promise<OverlayImage> {
  assertVolume("ct", ct);
  assertVolume("labels", labels);
  const opts = optionsObject("options", options) as OverlayOptions;
  const [nx, ny, nz] = ct.dims;
  if (labels.dims[0] !== nx || labels.dims[1] !== ny || labels.dims[2] !== nz) {
    throw new RangeError(
      `labels.dims [${labels.dims.join(", ")}] differ from ct.dims [${ct.dims.join(", ")}]: the labels must be on the CT's grid`,
    );
  }
  if (dtypeOf(ct.data) === undefined) throw invalidParameterError("ct.data", "a typed array", ct.data);
  const convention = opts.convention ?? "radiological";
  if (convention !== "radiological" && convention !== "neurological")
    throw invalidParameterError("options.convention", '"radiological" or "neurological"', convention);
  const wins =
    opts.window === undefined
      ? [{ ...BRAIN_WINDOW }]
      : Array.isArray(opts.window)
        ? opts.window.map((w, i) => checkWindow(`options.window[${i}]`, w))
        : [checkWindow("options.window", opts.window)];
  if (wins.length === 0) throw invalidParameterError("options.window", "a window or a non-empty array of windows", opts.window);
  if (opts.subdural !== undefined && typeof opts.subdural !== "boolean")
    throw invalidParameterError("options.subdural", "a boolean", opts.subdural);
  if (opts.subdural) wins.push({ ...SUBDURAL_WINDOW });
  const columns = opts.columns ?? 4;
  if (!Number.isInteger(columns) || columns < 1 || columns > 64)
    throw invalidParameterError("options.columns", "an integer from 1 to 64", columns);
  const fill = opts.fill ?? 0.35;
  assertNumber("options.fill", fill, 0, 1);
  const maxSlices = opts.maxSlices ?? 64;
  if (!Number.isInteger(maxSlices) || maxSlices < 1) throw invalidParameterError("options.maxSlices", "a positive integer", maxSlices);
  if (opts.title !== undefined && typeof opts.title !== "string") throw invalidParameterError("options.title", "a string", opts.title);
  const names = opts.classes ?? BHSD_CLASSES;
  if (typeof names !== "object" || names === null) throw invalidParameterError("options.classes", "an object of label value → name", names);
  const lab = labelArray(labels);

  // slices: given, or those holding a label
  let slices: number[];
  let sliceNote = "";
  if (opts.slices !== undefined) {
    if (!Array.isArray(opts.slices) || opts.slices.length === 0)
      throw invalidParameterError("options.slices", "a non-empty array of slice indices", opts.slices);
    opts.slices.forEach((z, i) => {
      if (!Number.isInteger(z) || z < 0 || z >= nz)
        throw invalidParameterError(`options.slices[${i}]`, `a slice index from 0 to ${nz - 1}`, z);
    });
    slices = [...opts.slices];
  } else {
    slices = [];
    const plane = nx * ny;
    for (let z = 0; z < nz; z++) {
      for (let i = z * plane, e = i + plane; i < e; i++) {
        if (lab[i]) {
          slices.push(z);
          break;
        }
      }
    }
    sliceNote = slices.length ? `slices holding blood: ${slices.length} of ${nz}` : `no blood labelled: middle slice of ${nz}`;
    if (!slices.length) slices = [Math.floor(nz / 2)];
  }
  if (slices.length > maxSlices) {
    const all = slices;
    slices = Array.from({ length: maxSlices }, (_, k) => all[Math.round((k * (all.length - 1)) / (maxSlices - 1 || 1))]!);
    slices = [...new Set(slices)];
    sliceNote += ` (${slices.length} shown)`;
  }

  const orient = sliceOrientation(ct.affine, convention);
  const spacing = ct.spacing;
  const P: Prepared = { ct, lab, dims: ct.dims, orient, spacing, fill };
  const sh = spacing[orient.h],
    sv = spacing[orient.v];
  const nh = ct.dims[orient.h],
    nv = ct.dims[orient.v];
  const p = opts.pixelMm ?? Math.max(nh * sh, nv * sv) / 256;
  assertPositive("options.pixelMm", p);
  const W = Math.max(1, Math.round((nh * sh) / p)),
    H = Math.max(1, Math.round((nv * sv) / p));
  if (W * H > 16e6) throw new RangeError(`options.pixelMm ${p} makes a ${W} × ${H} pixel slice; choose a larger pixel size`);

  const montage: CellSpec[] = [];
  for (const z of slices) {
    for (const win of wins)
      montage.push({
        kind: "slice",
        z,
        win,
        hr: [0, nh - 1],
        vr: [0, nv - 1],
        p,
        w: W,
        h: H,
        header: `z ${z} ${windowLabel(win)}`,
        captions: [],
      });
  }

  // bleeds
  let comps: Component[] = [];
  const bleedsOpt = opts.bleeds ?? true;
  if (Array.isArray(bleedsOpt)) comps = bleedsOpt;
  else if (bleedsOpt === true) {
    if (lab.some((v) => v > 0)) {
      const lv: Volume = { data: lab, dims: ct.dims, spacing: ct.spacing, affine: ct.affine };
      const cc = await connectedComponents(lv, { connectivity: 26, perClass: true });
      comps = await componentStats(cc.labels, { classes: lab });
    }
  } else if (bleedsOpt !== false) throw invalidParameterError("options.bleeds", "a boolean or an array of components", bleedsOpt);
  const maxBleeds = opts.maxBleeds ?? 24;
  if (!Number.isInteger(maxBleeds) || maxBleeds < 0) throw invalidParameterError("options.maxBleeds", "a non-negative integer", maxBleeds);
  const allBleeds = comps.length;
  comps.forEach((c, i) => {
    const z = c?.abc?.slice;
    if (!Number.isInteger(z) || z < 0 || z >= nz || !c.bbox)
      throw invalidParameterError(`options.bleeds[${i}]`, "a component with bbox and abc.slice inside the CT", c);
  });
  // the largest first (ties: in the given order)
  comps = comps
    .map((c, i) => ({ c, i }))
    .sort((a, b) => (b.c.volumeMl ?? 0) - (a.c.volumeMl ?? 0) || a.i - b.i)
    .slice(0, maxBleeds)
    .map((x) => x.c);
  const crops: CellSpec[] = [];
  comps.forEach((c) => {
    const z = c.abc.slice;
    const range = (axis: 0 | 1): [number, number] => {
      const lo = c.bbox.min[axis],
        hi = c.bbox.max[axis],
        n = ct.dims[axis];
      const m = Math.max(6, Math.ceil((hi - lo + 1) * 0.5));
      return [Math.max(0, lo - m), Math.min(n - 1, hi + m)];
    };
    const hr = range(orient.h),
      vr = range(orient.v);
    const mmH = (hr[1] - hr[0] + 1) * sh,
      mmV = (vr[1] - vr[0] + 1) * sv;
    const pc = Math.min(p, Math.max(Math.max(mmH, mmV) / 192, Math.min(sh, sv) / 8));
    const name = names[c.class] ?? `class ${c.class}`;
    crops.push({
      kind: "bleed",
      z,
      win: wins[0]!,
      hr,
      vr,
      p: pc,
      w: Math.max(1, Math.round(mmH / pc)),
      h: Math.max(1, Math.round(mmV / pc)),
      header: `#${c.label} ${name} z ${z}`,
      captions: [`${fmtMl(c.volumeMl)} mL`, `ABC/2 ${fmtMl(c.abc2Ml)} mL`],
      bleed: { label: c.label, class: c.class },
    });
  });

  // layout: title, legend, montage grid, crops in rows
  const classList = Object.keys(names)
    .map(Number)
    .filter((k) => Number.isInteger(k) && k > 0)
    .sort((a, b) => a - b);
  const legendItems = classList.map((k) => ({ k, text: `${k} ${names[k]}` }));
  const legendW = legendItems.reduce((a, it) => a + 18 + textWidth(it.text, TEXT) + 16, 0);
  const cellM = cellSize(montage[0]!);
  const cols = Math.min(columns, montage.length);
  const montageW = cols * cellM.w + (cols - 1) * GAP;
  const pageW = Math.max(montageW, legendW, textWidth(opts.title ?? "", TEXT), textWidth(sliceNote, TEXT), 320) + 2 * GAP;
  const cropPos: { x: number; y: number }[] = [];
  let cx = GAP,
    cy = 0,
    rowH = 0;
  for (const c of crops) {
    const s = cellSize(c);
    if (cx > GAP && cx + s.w > pageW - GAP) {
      cx = GAP;
      cy += rowH + GAP;
      rowH = 0;
    }
    cropPos.push({ x: cx, y: cy });
    cx += s.w + GAP;
    rowH = Math.max(rowH, s.h);
  }
  const cropsH = crops.length ? cy + rowH : 0;
  let y = GAP;
  const titleY = opts.title ? y : -1;
  if (opts.title) y += LINE;
  const legendY = y;
  y += LINE + 4;
  const noteY = y;
  y += sliceNote ? LINE : 0;
  const montageY = y;
  const rows = Math.ceil(montage.length / cols);
  y += rows * cellM.h + (rows - 1) * GAP + GAP;
  const bleedsTitleY = y;
  if (crops.length || bleedsOpt !== false) y += LINE;
  const cropsY = y;
  y += cropsH + GAP;
  const canvas = new Canvas(pageW, y, BG);

  if (opts.title) canvas.text(GAP, titleY, opts.title, WHITE, TEXT);
  let lx = GAP;
  for (const it of legendItems) {
    canvas.fill(lx, legendY, 14, 14, classColor(it.k));
    canvas.text(lx + 18, legendY, it.text, WHITE, TEXT);
    lx += 18 + textWidth(it.text, TEXT) + 16;
  }
  if (sliceNote) canvas.text(GAP, noteY, sliceNote, GREY, TEXT);
  const panels: Panel[] = [];
  montage.forEach((c, i) => {
    const col = i % cols,
      row = Math.floor(i / cols);
    panels.push(drawCell(canvas, GAP + col * (cellM.w + GAP), montageY + row * (cellM.h + GAP), c, P));
  });
  if (crops.length || bleedsOpt !== false) {
    const count = crops.length < allBleeds ? `the ${crops.length} largest of ${allBleeds}` : `${crops.length}`;
    canvas.text(GAP, bleedsTitleY, allBleeds ? `bleeds, each at its largest slice (${count})` : "no bleeds", GREY, TEXT);
  }
  crops.forEach((c, i) => panels.push(drawCell(canvas, cropPos[i]!.x, cropsY + cropPos[i]!.y, c, P)));
  return { png: canvas.png(), width: canvas.width, height: canvas.height, panels, slices };
}

/** The overlay picture as PNG bytes (see renderOverlayImage). */
export async function renderOverlay(ct: Volume, labels: Volume, options?: OverlayOptions): Promise<Uint8Array> {
  return (await renderOverlayImage(ct, labels, options)).png;
}
