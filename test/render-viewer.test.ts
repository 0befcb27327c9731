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
const server = (token?: string) => createServer({ modelDir: join(dir, "no-models"), logger: false, resultDir: mkdtempSync(join(dir, "results-")), ...(token ? { token } : {}) });

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
    const doc = JSON.parse((await app.inject({ method: "GET", url: "/v1/openapi.json", headers: { authorization: "Bearer s3cret" } })).body);
    t.false("/" in doc.paths, "the page is not part of the API's description");
  } finally {
    await app.close();
  }
});
