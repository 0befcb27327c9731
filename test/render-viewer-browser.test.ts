/**
 * The web viewer in a real browser: Chromium from Debian's packages (.ci/run installs
 * chromium-headless-shell; BHSD_CHROMIUM names another binary) driven by puppeteer-core. The page
 * is loaded from `bhsd serve`'s own routes with a token, a phantom is uploaded and segmented by the
 * bundled model, the bleed table must hold the service's own report, the WebGL canvas must show
 * the overlay's colours (read back: coloured pixels that vanish when the labels' opacity is 0),
 * and the console must stay free of errors. A screenshot is left as an artefact.
 */
import test from "ava";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode } from "fast-png";
import { createServer, makePhantom, writeNifti } from "../lib/index.js";
import { ROOT } from "./helpers.js";

const CHROMIUM = [process.env.BHSD_CHROMIUM, "/usr/bin/chromium-headless-shell", "/usr/bin/chromium"].find(
  (p): p is string => !!p && existsSync(p),
);

(CHROMIUM ? test : test.skip)(
  "upload a phantom in Chromium: progress, the bleed table of the service's report, the overlay drawn, no console error",
  async (t) => {
    t.timeout(300_000);
    const puppeteer = (await import("puppeteer-core")).default;
    const dir = mkdtempSync(join(tmpdir(), "bhsd-browser-"));
    const models = join(dir, "models");
    mkdirSync(models);
    copyFileSync(join(ROOT, "models", "demo.onnx"), join(models, "demo.onnx"));
    if (existsSync(join(ROOT, "models", "demo.json"))) copyFileSync(join(ROOT, "models", "demo.json"), join(models, "demo.json"));
    const ctFile = join(dir, "phantom.nii.gz");
    await writeNifti(ctFile, makePhantom(101, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5] }).ct);
    const app = await createServer({ modelDir: models, logger: false, resultDir: mkdtempSync(join(dir, "results-")), token: "tok-123" });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const port = (app.server.address() as { port: number }).port;
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM!,
      args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
    });
    try {
      const page = await browser.newPage();
      await page.setViewport({ width: 1400, height: 1000 });
      const errors: string[] = [];
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      page.on("pageerror", (e) => errors.push(String(e)));
      page.on("requestfailed", (r) => errors.push(`${r.url()}: ${r.failure()?.errorText}`));
      // the token as typed once before (kept for the session)
      await page.evaluateOnNewDocument(() => sessionStorage.setItem("bhsd-token", "tok-123"));
      await page.goto(`http://127.0.0.1:${port}/`);
      await page.waitForFunction(() => /Ready/.test(document.getElementById("status")!.textContent ?? ""), { timeout: 30_000 });
      t.is(await page.$eval("#model", (e) => (e as HTMLSelectElement).value), "demo");
      const seen = new Set<string>();
      const poll = setInterval(
        () =>
          void page
            .$eval("#status", (e) => e.textContent ?? "")
            .then((s) => seen.add(s.replace(/\d+/g, "N")))
            .catch(() => {}),
        100,
      );
      await (await page.$("#file"))!.uploadFile(ctFile);
      await page.waitForFunction(() => /bleed\(s\)|answered|failed/.test(document.getElementById("status")!.textContent ?? ""), {
        timeout: 180_000,
      });
      clearInterval(poll);
      const status = await page.$eval("#status", (e) => e.textContent ?? "");
      t.regex(status, /^\d+ bleed\(s\); model demo on /, status);
      t.true(
        [...seen].some((s) => /^Uploading|^Segmenting on the service/.test(s)),
        `progress shown: ${[...seen].join(" | ")}`,
      );
      // the table is the report the service answered (kept by the page), row for row; its labels are the service's result
      const report = (await page.evaluate(() => (window as unknown as { bhsdViewer: { report: unknown } }).bhsdViewer.report)) as {
        components: { volumeMl: number; abc2Ml: number; slices: number }[];
        labels: string;
        model: string;
      };
      t.is(report.model, "demo");
      t.is((await app.inject({ method: "GET", url: report.labels, headers: { authorization: "Bearer tok-123" } })).statusCode, 200);
      const rows = await page.$$eval("#bleeds tbody tr", (rs) => rs.map((r) => [...r.querySelectorAll("td")].map((c) => c.textContent)));
      t.is(rows.length, report.components.length);
      report.components.forEach((c, i) => t.deepEqual(rows[i]!.slice(2), [c.volumeMl.toFixed(2), c.abc2Ml.toFixed(2), String(c.slices)]));
      // click the largest bleed: the crosshair goes there; then read the canvas back
      await page.click(
        `#bleeds tbody tr:nth-child(${report.components.reduce((b, c, i, a) => (c.volumeMl > a[b]!.volumeMl ? i : b), 0) + 1})`,
      );
      await new Promise((r) => setTimeout(r, 500));
      const coloured = async () => {
        const png = decode(await (await page.$("#gl"))!.screenshot({ type: "png" }));
        let n = 0;
        for (let i = 0; i < png.width * png.height; i++) {
          const o = i * png.channels,
            r = png.data[o]!,
            g = png.data[o + 1]!,
            b = png.data[o + 2]!;
          const crosshair = r > 180 && g < 80 && b < 80;
          if (!crosshair && Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
        }
        return n;
      };
      const withLabels = await coloured();
      const shot = join(tmpdir(), "bhsd-artifacts");
      mkdirSync(shot, { recursive: true });
      writeFileSync(join(shot, "viewer.png"), await page.screenshot({ type: "png", fullPage: true }));
      t.log(`screenshot: ${join(shot, "viewer.png")}`);
      await page.evaluate(() => {
        const v = (window as unknown as { bhsdViewer: { nv: { setOpacity(i: number, o: number): void; drawScene(): void } } }).bhsdViewer;
        v.nv.setOpacity(1, 0);
        v.nv.drawScene();
      });
      await new Promise((r) => setTimeout(r, 300));
      const without = await coloured();
      t.true(withLabels > 200, `coloured pixels with the labels: ${withLabels}`);
      t.true(without < withLabels / 10, `coloured pixels without them: ${without} (with: ${withLabels})`);
      t.deepEqual(errors, []);
    } finally {
      await browser.close();
      await app.close();
    }
  },
);

(CHROMIUM ? test : test.skip)(
  "behind a path prefix (a proxy serving the service under /bhsd/): the page, NiiVue, the API and a `bhsd view` case all load",
  async (t) => {
    t.timeout(120_000);
    const puppeteer = (await import("puppeteer-core")).default;
    const http = await import("node:http");
    const { registerViewerCase } = await import("../lib/server/viewer.js");
    const dir = mkdtempSync(join(tmpdir(), "bhsd-prefix-"));
    const geo = {
      dims: [32, 32, 6] as [number, number, number],
      spacing: [4, 4, 5] as [number, number, number],
      affine: [4, 0, 0, -64, 0, 4, 0, -64, 0, 0, 5, 0, 0, 0, 0, 1],
    };
    const lab = new Uint8Array(32 * 32 * 6);
    for (let y = 10; y < 16; y++) for (let x = 10; x < 16; x++) lab[(3 * 32 + y) * 32 + x] = 2;
    await writeNifti(join(dir, "ct.nii.gz"), { data: new Int16Array(32 * 32 * 6).fill(30), ...geo });
    await writeNifti(join(dir, "labels.nii.gz"), { data: lab, ...geo });
    const app = await createServer({ modelDir: join(ROOT, "models"), logger: false, resultDir: mkdtempSync(join(dir, "results-")) });
    await registerViewerCase(app, { ct: join(dir, "ct.nii.gz"), labels: join(dir, "labels.nii.gz") });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const port = (app.server.address() as { port: number }).port;
    // the proxy: /bhsd/X → the service's /X; anything else 404, so an absolute address in the page fails
    const proxy = http.createServer((req, res) => {
      if (!req.url!.startsWith("/bhsd/")) return void res.writeHead(404).end("outside the prefix");
      const up = http.request({ host: "127.0.0.1", port, path: req.url!.slice(5), method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode!, r.headers);
        r.pipe(res);
      });
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const pport = (proxy.address() as { port: number }).port;
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM!,
      args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      page.on("pageerror", (e) => errors.push(String(e)));
      const outside: string[] = [];
      page.on(
        "request",
        (r) =>
          !new URL(r.url()).pathname.startsWith("/bhsd/") &&
          !r.url().startsWith("blob:") &&
          !r.url().startsWith("data:") &&
          outside.push(r.url()),
      );
      await page.goto(`http://127.0.0.1:${pport}/bhsd/`);
      await page.waitForFunction(() => /bleed\(s\)|rror|answered/.test(document.getElementById("status")!.textContent ?? ""), {
        timeout: 60_000,
      });
      t.is(await page.$eval("#status", (e) => e.textContent), "1 bleed(s); labels from labels.nii.gz.");
      t.is(await page.$eval("#model", (e) => (e as HTMLSelectElement).value), "demo", "v1/info reached through the prefix");
      t.regex(await page.$eval("#downloads", (e) => e.textContent ?? ""), /labels \(NIfTI\) · report \(HTML\) · report \(JSON\)/);
      t.deepEqual(outside, [], "every request stayed under the prefix");
      t.deepEqual(errors, []);
    } finally {
      await browser.close();
      proxy.close();
      await app.close();
    }
  },
);
