/**
 * The web viewer's routes on `bhsd serve`: the page is self-contained apart from the service's own
 * relative addresses (so it works offline and behind a path prefix), its script parses, NiiVue is
 * served by the service as the module its package ships (decoded here independently), and the page
 * and script answer without the token while the API keeps asking for it.
 * (Not yet here: driving the page in a real browser.)
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "../lib/index.js";
import { ROOT } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-viewer-"));
const server = (token?: string) =>
  createServer({
    modelDir: join(dir, "no-models"),
    logger: false,
    resultDir: mkdtempSync(join(dir, "results-")),
    ...(token ? { token } : {}),
  });

test("GET / is a page whose every address is relative, whose script parses, and that loads NiiVue from the service", async (t) => {
  const app = await server();
  try {
    const r = await app.inject({ method: "GET", url: "/" });
    t.is(r.statusCode, 200);
    t.regex(String(r.headers["content-type"]), /^text\/html/);
    const html = r.body;
    t.notRegex(html, /https?:|\/\/[a-z]/i, "no outside address (no CDN)");
    const markup = html.replace(/<script type="module">[\s\S]*?<\/script>/, "");
    for (const m of markup.matchAll(/\b(?:src|href|action)\s*=\s*"([^"]*)"/g)) t.fail(`static reference ${m[1]}`);
    // the module script, checked by node's parser (top-level await aside, it is plain ES2022)
    const script = html.match(/<script type="module">([\s\S]*?)<\/script>/)![1]!;
    const file = join(dir, "page.mjs");
    writeFileSync(file, script);
    const check = spawnSync(process.execPath, ["--check", file], { encoding: "utf8" });
    t.is(check.status, 0, check.stderr);
    // addresses are made relative to the page: v1/…, viewer/niivue.js, and the result's path with its leading "/" dropped
    t.regex(script, /new URL\("\.", location\.href\)/);
    t.regex(script, /api\("v1\/info"\)/);
    t.regex(script, /api\("v1\/segment\?"/);
    t.regex(script, /import\(api\("viewer\/niivue\.js"\)\)/);
    t.notRegex(script, /fetch\("\//, "no absolute path");
    const none = await app.inject({ method: "GET", url: "/viewer/case.json" });
    t.is(none.statusCode, 200, "no case loaded: answered, not a failed request in the page");
    t.is(none.body, "null");
  } finally {
    await app.close();
  }
});

test("viewer/niivue.js is @niivue/niivue's self-contained build, decoded, with no import to resolve", async (t) => {
  const app = await server();
  try {
    const r = await app.inject({ method: "GET", url: "/viewer/niivue.js" });
    t.is(r.statusCode, 200);
    t.regex(String(r.headers["content-type"]), /^text\/javascript/);
    // the package's ./min export, read and decoded here on its own
    const pkgDir = join(ROOT, "node_modules", "@niivue", "niivue");
    const pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
    const min = readFileSync(join(pkgDir, pkg.exports["./min"].import), "utf8");
    const encoded = min.slice(min.indexOf('"') + 1, min.lastIndexOf('"'));
    t.is(r.body, decodeURIComponent(encoded));
    t.regex(r.body, /export\s*\{[^}]*\bNiivue\b/);
    t.notRegex(r.body, /(^|[;}\s])import\s*[\w{*][^;(]*?from\s*["']/, "no static import: the browser needs nothing else");
  } finally {
    await app.close();
  }
});

test("with a token: the page and NiiVue answer without it, the API still asks for it", async (t) => {
  const app = await server("s3cret");
  try {
    t.is((await app.inject({ method: "GET", url: "/" })).statusCode, 200);
    t.is((await app.inject({ method: "GET", url: "/viewer/niivue.js" })).statusCode, 200);
    t.is((await app.inject({ method: "GET", url: "/v1/info" })).statusCode, 401);
    t.is((await app.inject({ method: "GET", url: "/v1/info", headers: { authorization: "Bearer s3cret" } })).statusCode, 200);
    const doc = JSON.parse(
      (await app.inject({ method: "GET", url: "/v1/openapi.json", headers: { authorization: "Bearer s3cret" } })).body,
    );
    t.false("/" in doc.paths, "the page is not part of the API's description");
  } finally {
    await app.close();
  }
});

async function caseFiles() {
  const { writeNifti } = await import("../lib/index.js");
  const geo = {
    dims: [16, 16, 4] as [number, number, number],
    spacing: [2, 2, 5] as [number, number, number],
    affine: [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 5, 0, 0, 0, 0, 1],
  };
  const lab = new Uint8Array(16 * 16 * 4);
  for (let x = 2; x < 6; x++) lab[(1 * 16 + 3) * 16 + x] = 2; // IPH, 4 voxels of 20 mm³
  lab[(3 * 16 + 12) * 16 + 12] = 5; // SDH, 1 voxel
  const ct = join(dir, "case-ct.nii.gz"),
    labels = join(dir, "case-labels.nii");
  await writeNifti(ct, { data: new Int16Array(16 * 16 * 4).fill(35), ...geo });
  await writeNifti(labels, { data: lab, ...geo });
  return { ct, labels };
}

test("a case loaded for `bhsd view`: case.json names it with its bleeds measured, the files served as given", async (t) => {
  const { registerViewerCase } = await import("../lib/server/viewer.js");
  const f = await caseFiles();
  const app = await server();
  try {
    await registerViewerCase(app, f);
    const info = JSON.parse((await app.inject({ method: "GET", url: "/viewer/case.json" })).body);
    t.is(info.name, "case-ct.nii.gz");
    t.is(info.ct, "viewer/case/ct");
    t.deepEqual(info.report.components.map((c: { class: number; voxels: number }) => [c.class, c.voxels]).sort(), [
      [2, 4],
      [5, 1],
    ]);
    t.is(info.report.perClass["2"].volumeMl, 4 * 0.02);
    t.is(info.report.labels, "viewer/case/labels");
    t.deepEqual(Buffer.from((await app.inject({ method: "GET", url: "/viewer/case/ct" })).rawPayload), readFileSync(f.ct));
    t.deepEqual(Buffer.from((await app.inject({ method: "GET", url: "/viewer/case/labels" })).rawPayload), readFileSync(f.labels));
    // the HTML report of the case: its bleed table holds the two bleeds, its picture is inline
    t.is(info.report.reportHtml, "viewer/case/report.html");
    const html = (await app.inject({ method: "GET", url: "/viewer/case/report.html" })).body;
    t.is([...html.matchAll(/<tr data-bleed=/g)].length, 2);
    t.regex(html, /<img [^>]*src="data:image\/png;base64,/);
  } finally {
    await app.close();
  }
  const other = await server();
  try {
    const { writeNifti } = await import("../lib/index.js");
    const small = join(dir, "small.nii");
    await writeNifti(small, {
      data: new Uint8Array(8),
      dims: [2, 2, 2],
      spacing: [1, 1, 1],
      affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    });
    await t.throwsAsync(registerViewerCase(other, { ct: f.ct, labels: small }), {
      message: /2 × 2 × 2 voxels but the CT .* is 16 × 16 × 4/,
    });
  } finally {
    await other.close();
  }
});

test("bhsd view CT LABELS prints the URL of a viewer with that case, and stops on SIGTERM", async (t) => {
  const { spawn } = await import("node:child_process");
  const f = await caseFiles();
  const cli = process.env.BHSD_TEST_CLI ?? join(ROOT, "dist", "cli", "main.js");
  const child = spawn(process.execPath, [cli, "view", f.ct, f.labels], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, BHSD_TOKEN: "" },
  });
  let err = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      const m = /^(http:\/\/127\.0\.0\.1:\d+\/)\n/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on("exit", (code) => reject(new Error(`bhsd view exited ${code}: ${err}`)));
    setTimeout(() => reject(new Error(`no URL after 60 s: ${out} ${err}`)), 60_000);
  });
  try {
    const page = await fetch(url);
    t.is(page.status, 200);
    t.regex(await page.text(), /viewer\/case\.json/);
    const info = await (await fetch(new URL("viewer/case.json", url))).json();
    t.is(info.report.components.length, 2);
  } finally {
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    child.kill("SIGTERM");
    t.is(await exited, 0);
  }
});
