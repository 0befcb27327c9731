/**
 * The web viewer of `bhsd serve` (issue 24): `GET /` answers a page that uploads a CT to
 * `v1/segment`, shows the upload's progress and then the CT with the labels over it in NiiVue
 * (`@niivue/niivue`, served by the service itself at `viewer/niivue.js`: no CDN, the page works
 * offline), the table of bleeds (a click moves the crosshair to the bleed) and download links.
 * Every URL in the page is relative to the page, so it works behind a path prefix; the token, when
 * the service has one, is typed once into the page and sent as the API's bearer token. The page
 * and the script are public (they hold nothing); the API keeps its authentication.
 */
import { readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import type { FastifyInstance } from "fastify";
import { PACKAGE_ROOT } from "../paths.js";
import { readNifti } from "../io/nifti.js";
import { ctNiftiBytes, readCt } from "../io/ct.js";
import { isFolder } from "../io/dicom.js";
import { componentStats, connectedComponents } from "../ops/components.js";
import { renderReport } from "../render/report.js";
import { classColor } from "../render/overlay.js";
import { BHSD_CLASSES } from "../metrics/evaluate.js";

/** Routes that answer without the bearer token. */
export const VIEWER_PUBLIC_ROUTES: ReadonlySet<string> = new Set(["/", "/viewer/niivue.js"]);

/** Where NiiVue's self-contained build is: its package's `./min` export. */
function niivuePath(): string {
  try {
    return new URL(import.meta.resolve("@niivue/niivue/min")).pathname;
  } catch {
    return join(PACKAGE_ROOT, "node_modules", "@niivue", "niivue", "build", "index.min.js");
  }
}

/**
 * NiiVue's `./min` build is `export const esm = "<the whole module, URI-encoded>"`: the module
 * itself, with no imports, is served decoded.
 */
export async function niivueModule(path = niivuePath()): Promise<Buffer> {
  const text = await readFile(path, "utf8");
  const m = /^export const esm\s*=\s*"([^"]*)";?\s*$/s.exec(text);
  return Buffer.from(m ? decodeURIComponent(m[1]!) : text, "utf8");
}

export function viewerPage(): string {
  const classes = Object.entries(BHSD_CLASSES).map(([k, name]) => ({ k: Number(k), name, rgb: classColor(Number(k)) }));
  return PAGE.replace("__CLASSES__", JSON.stringify(classes).replace(/</g, "\\u003c"));
}

export interface ViewerCase {
  /** The CT (NIfTI path). */
  ct: string;
  /** Its labels (NIfTI path); without them the page segments the CT with the service's model. */
  labels?: string;
}

/**
 * Loads a case into the viewer (`bhsd view`): `viewer/case.json` names it, `viewer/case/ct` and
 * `viewer/case/labels` serve the files as given; the labels' bleeds are measured here. Call before
 * the server listens.
 */
export async function registerViewerCase(app: FastifyInstance, c: ViewerCase, readOptions?: { maxBytes?: number }): Promise<void> {
  // A DICOM folder or zip is read here and served to the page as NIfTI.
  const dicomCt = (await isFolder(c.ct)) || /\.zip$/i.test(c.ct) ? await readCt(c.ct, readOptions) : undefined;
  const ctBytes = dicomCt ? Buffer.from(ctNiftiBytes(dicomCt)) : await readFile(c.ct);
  const ct = dicomCt ?? (await readNifti(ctBytes, readOptions));
  let report: Record<string, unknown> | null = null;
  let labelBytes: Buffer | null = null;
  let reportHtml: string | null = null;
  if (c.labels) {
    labelBytes = await readFile(c.labels);
    const labels = await readNifti(labelBytes, readOptions);
    if (labels.dims.join() !== ct.dims.join())
      throw new RangeError(`labels ${c.labels} are ${labels.dims.join(" × ")} voxels but the CT ${c.ct} is ${ct.dims.join(" × ")}`);
    const lab = Uint8Array.from(labels.data as ArrayLike<number>, (v, i) => {
      if (!(v >= 0 && v <= 255 && Number.isInteger(v))) throw new RangeError(`labels ${c.labels}: voxel ${i} is ${v}, not a label 0..255`);
      return v;
    });
    const lv = { data: lab, dims: labels.dims, spacing: labels.spacing, affine: labels.affine };
    const cc = await connectedComponents(lv, { connectivity: 26, perClass: true });
    const components = await componentStats(cc.labels, { classes: lab });
    const voxelMl = (labels.spacing[0] * labels.spacing[1] * labels.spacing[2]) / 1000;
    const perClass: Record<string, { name: string; voxels: number; volumeMl: number }> = {};
    for (const [k, name] of Object.entries(BHSD_CLASSES)) perClass[k] = { name, voxels: 0, volumeMl: 0 };
    for (const v of lab) if (v) (perClass[String(v)] ??= { name: `class ${v}`, voxels: 0, volumeMl: 0 }).voxels++;
    for (const k of Object.keys(perClass)) perClass[k]!.volumeMl = perClass[k]!.voxels * voxelMl;
    report = {
      labels: "viewer/case/labels",
      reportHtml: "viewer/case/report.html",
      classes: { ...BHSD_CLASSES },
      perClass,
      components,
      source: basename(c.labels),
    };
    reportHtml = await renderReport({ ct, labels: lv, caseName: basename(c.ct), notes: { labels: basename(c.labels) } });
  }
  const name = (p: string) => (/\.nii(\.gz)?$/i.test(p) ? basename(p) : basename(p) + (ctBytes[0] === 0x1f ? ".nii.gz" : ".nii"));
  CASES.set(app, { name: name(c.ct), ct: "viewer/case/ct", report });
  app.get("/viewer/case/ct", { schema: { hide: true } }, async (_req, reply) => reply.type("application/octet-stream").send(ctBytes));
  if (labelBytes) {
    const lb = labelBytes;
    app.get("/viewer/case/labels", { schema: { hide: true } }, async (_req, reply) => reply.type("application/octet-stream").send(lb));
    const html = reportHtml!;
    app.get("/viewer/case/report.html", { schema: { hide: true } }, async (_req, reply) =>
      reply.type("text/html; charset=utf-8").send(html),
    );
  }
}

/** The case `bhsd view` loaded into each server, if any. */
const CASES = new WeakMap<FastifyInstance, { name: string; ct: string; report: Record<string, unknown> | null }>();

export async function registerViewer(app: FastifyInstance): Promise<void> {
  let bundle: Promise<Buffer> | null = null;
  const page = viewerPage();
  // the loaded case, or null: always answered, so that a page without one logs no failed request
  app.get("/viewer/case.json", { schema: { hide: true } }, async (_req, reply) =>
    reply.type("application/json").send(JSON.stringify(CASES.get(app) ?? null)),
  );
  app.get("/", { schema: { hide: true } }, async (_req, reply) =>
    reply.type("text/html; charset=utf-8").header("cache-control", "no-cache").send(page),
  );
  app.get("/viewer/niivue.js", { schema: { hide: true } }, async (_req, reply) => {
    bundle ??= niivueModule();
    let body: Buffer;
    try {
      body = await bundle;
    } catch (e) {
      bundle = null;
      return reply
        .code(503)
        .send({ error: "unavailable", message: `the viewer's NiiVue build could not be read (${(e as Error).message.split("\n")[0]})` });
    }
    return reply.type("text/javascript; charset=utf-8").header("cache-control", "public, max-age=3600").send(body);
  });
}

const PAGE = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>bhsd viewer</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#111;color:#eee}
header{padding:.6em 1em;background:#222;font-weight:bold}
#controls{display:flex;flex-wrap:wrap;gap:1em;align-items:center;padding:.6em 1em;background:#1a1a1a}
#drop{border:2px dashed #666;padding:.8em 1.2em;border-radius:6px}#drop.over{border-color:#e69f00}
main{display:flex;gap:1em;padding:1em;flex-wrap:wrap}#view{width:min(900px,95vw);height:640px;background:#000}
aside{min-width:320px}table{border-collapse:collapse}th,td{border:1px solid #444;padding:.2em .5em;text-align:right}
td:nth-child(2),th:nth-child(2){text-align:left}tbody tr{cursor:pointer}tbody tr:hover{background:#333}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em}#status{min-width:20em}.err{color:#ff8a80}a{color:#56b4e9}
</style></head><body>
<header>bhsd: intracranial hemorrhage on head CT</header>
<section id="controls">
<label>Token <input id="token" type="password" autocomplete="off" size="16" placeholder="if the service needs one"></label>
<label>Model <select id="model"></select></label>
<label><input id="tta" type="checkbox"> test-time mirroring</label>
<label>Remove bleeds under <input id="minml" type="number" min="0" step="0.01" value="0.05" size="5"> mL</label>
<div id="drop">Drop a CT (.nii, .nii.gz) here or <input id="file" type="file" accept=".nii,.gz"></div>
<progress id="progress" max="1" value="0" hidden></progress><span id="status" role="status"></span>
</section>
<main><div id="view"><canvas id="gl"></canvas></div>
<aside><h3>Bleeds</h3><table id="bleeds"><thead><tr><th>#</th><th>class</th><th>mL</th><th>ABC/2 mL</th><th>slices</th></tr></thead><tbody></tbody></table>
<p id="volumes"></p><p id="downloads"></p></aside></main>
<script type="module">
const CLASSES = __CLASSES__;
// every address relative to this page: the service may sit behind a path prefix
const base = new URL(".", location.href);
const api = (p) => new URL(p.replace(/^\\//, ""), base).href;
const $ = (id) => document.getElementById(id);
const tokenBox = $("token");
tokenBox.value = sessionStorage.getItem("bhsd-token") ?? "";
const headers = () => (tokenBox.value ? { authorization: "Bearer " + tokenBox.value } : {});
const status = (text, err) => { $("status").textContent = text; $("status").className = err ? "err" : ""; };
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

async function loadModels() {
  const r = await fetch(api("v1/info"), { headers: headers() });
  if (r.status === 401) return status("This service needs a token: type it above.", true), false;
  if (!r.ok) return status("v1/info answered " + r.status, true), false;
  const info = await r.json();
  $("model").innerHTML = info.models.map((m) => '<option>' + esc(m) + '</option>').join("");
  status(info.models.length ? "Ready: drop a CT." : "The service has no model.", !info.models.length);
  return true;
}
const start = () => loadModels().then((ok) => ok && loadCase());
tokenBox.addEventListener("change", () => { sessionStorage.setItem("bhsd-token", tokenBox.value); start(); });

function upload(file) {
  return new Promise((resolve, reject) => {
    const q = new URLSearchParams({ model: $("model").value });
    if ($("tta").checked) q.set("tta", "true");
    if ($("minml").value !== "" && Number($("minml").value) > 0) q.set("cleanupMinMl", String(Number($("minml").value)));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", api("v1/segment?" + q));
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader("content-type", "application/octet-stream");
    const bar = $("progress");
    bar.hidden = false; bar.value = 0;
    const t0 = performance.now();
    let timer = 0;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = e.loaded / e.total; status("Uploading " + Math.round(100 * bar.value) + " %"); } };
    xhr.upload.onload = () => {
      bar.removeAttribute("value");
      timer = setInterval(() => status("Segmenting on the service: " + ((performance.now() - t0) / 1000).toFixed(0) + " s"), 500);
    };
    xhr.onload = () => {
      clearInterval(timer); bar.hidden = true;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch {}
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else reject(new Error((body && body.message) || "the service answered " + xhr.status));
    };
    xhr.onerror = () => { clearInterval(timer); bar.hidden = true; reject(new Error("the upload failed (network)")); };
    xhr.send(file);
  });
}

let nv = null;
async function show(src, report) {
  const { Niivue } = await import(api("viewer/niivue.js"));
  if (!nv) {
    // radiological convention, as the report's pictures: the patient's right on the viewer's left
    nv = new Niivue({ backColor: [0, 0, 0, 1], isColorbar: false, isRadiologicalConvention: true });
    await nv.attachToCanvas($("gl"));
  }
  const labelsUrl = api(report.labels);
  await nv.loadVolumes([
    { url: src.url, name: src.name, headers: headers(), colormap: "gray", cal_min: 0, cal_max: 80 },
    { url: labelsUrl, name: "labels.nii.gz", headers: headers(), opacity: 0.6 },
  ]);
  const lut = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const c of CLASSES) { lut.R.push(c.rgb[0]); lut.G.push(c.rgb[1]); lut.B.push(c.rgb[2]); lut.A.push(255); lut.I.push(c.k); lut.labels.push(c.name); }
  nv.volumes[1].setColormapLabel(lut);
  nv.updateGLVolume();
  nv.setSliceType(nv.sliceTypeMultiplanar);
  const name = (k) => (report.classes && report.classes[k]) || (CLASSES.find((c) => c.k === Number(k)) || {}).name || "class " + k;
  const color = (k) => { const c = CLASSES.find((c) => c.k === Number(k)); return c ? "rgb(" + c.rgb.join(",") + ")" : "#ccc"; };
  const rows = report.components.map((b, i) =>
    '<tr data-i="' + i + '"><td>' + b.label + '</td><td><span class="sw" style="background:' + color(b.class) + '"></span>' + esc(name(b.class)) +
    '</td><td>' + b.volumeMl.toFixed(2) + '</td><td>' + b.abc2Ml.toFixed(2) + '</td><td>' + b.slices + '</td></tr>');
  $("bleeds").tBodies[0].innerHTML = rows.join("") || '<tr><td colspan="5">no bleed</td></tr>';
  $("bleeds").tBodies[0].onclick = (e) => {
    const tr = e.target.closest("tr[data-i]");
    if (!tr) return;
    const b = report.components[Number(tr.dataset.i)];
    nv.scene.crosshairPos = nv.mm2frac(b.centroid.world);
    nv.drawScene();
  };
  $("volumes").textContent = Object.entries(report.perClass).map(([k, c]) => c.name + " " + c.volumeMl.toFixed(2) + " mL").join(", ");
  // downloads: fetched with the token, handed over as files
  const labels = await fetch(labelsUrl, { headers: headers() });
  const links = [];
  if (labels.ok) links.push('<a download="labels.nii.gz" href="' + URL.createObjectURL(await labels.blob()) + '">labels (NIfTI)</a>');
  if (report.reportHtml) {
    const h = await fetch(api(report.reportHtml), { headers: headers() });
    if (h.ok) links.push('<a download="report.html" href="' + URL.createObjectURL(await h.blob()) + '">report (HTML)</a>');
  }
  links.push('<a download="report.json" href="' + URL.createObjectURL(new Blob([JSON.stringify(report, null, 2)], { type: "application/json" })) + '">report (JSON)</a>');
  $("downloads").innerHTML = links.join(" · ") + (report.expiresInS ? " (results expire after " + report.expiresInS + " s)" : "");
  status(report.components.length + " bleed(s)" + (report.model ? "; model " + report.model + " on " + report.backend + "." : "; labels from " + report.source + "."));
  window.bhsdViewer = { nv, report };
}

async function run(file) {
  if (!file) return;
  try {
    status("Uploading");
    const report = await upload(file);
    await show({ url: URL.createObjectURL(file), name: file.name }, report);
  } catch (e) {
    status(e.message, true);
  }
}
$("file").addEventListener("change", () => run($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); run(e.dataTransfer.files[0]); });
// a case loaded by \`bhsd view\`: its labels shown at once, or the CT segmented as if dropped
async function loadCase() {
  const r = await fetch(api("viewer/case.json"), { headers: headers() });
  if (!r.ok) return;
  const c = await r.json();
  if (!c) return;
  if (c.report) return show({ url: api(c.ct), name: c.name }, c.report).catch((e) => status(e.message, true));
  const ct = await fetch(api(c.ct), { headers: headers() });
  if (ct.ok) run(new File([await ct.blob()], c.name));
}
start();
</script></body></html>
`;
