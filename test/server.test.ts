import test from "ava";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, encodeModel, readNifti, readNpy, volumeFromArray, writeNifti } from "../lib/index.js";
import { sharedFixture } from "./helpers.js";
import { randomTensor } from "./ort.js";

// The real server on loopback, spoken to over HTTP.
const dir = mkdtempSync(join(tmpdir(), "bhsd-srv-"));
const modelDir = join(dir, "models");

function pointwise(): Uint8Array {
  const w1 = randomTensor([4, 1, 1, 1, 1], 1),
    w2 = randomTensor([6, 4, 1, 1, 1], 2);
  return encodeModel({
    opset: 17,
    nodes: [
      { opType: "Conv", inputs: ["x", "w1"], outputs: ["h"], attrs: { kernel_shape: [1, 1, 1] } },
      { opType: "Relu", inputs: ["h"], outputs: ["a"] },
      { opType: "Conv", inputs: ["a", "w2"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
    ],
    inputs: [{ name: "x", shape: [1, 1, "D", "H", "W"] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w1", dims: w1.shape, data: w1.data },
      { name: "w2", dims: w2.shape, data: w2.data },
    ],
  });
}

async function ctBytes(shape: [number, number, number]): Promise<Buffer> {
  const r = randomTensor(shape, 5);
  const p = join(dir, `ct_${shape.join("x")}.nii.gz`);
  await writeNifti(
    p,
    volumeFromArray(
      Int16Array.from(r.data, (v) => Math.round(v * 100 + 40)),
      shape,
      [5, 0.5, 0.5],
    ),
  );
  const { readFileSync } = await import("node:fs");
  return readFileSync(p);
}

test.before(async () => {
  const { mkdirSync } = await import("node:fs");
  mkdirSync(modelDir, { recursive: true });
  writeFileSync(join(modelDir, "tiny.onnx"), pointwise());
  writeFileSync(join(modelDir, "tiny.json"), JSON.stringify({ patchSize: [4, 32, 32] }));
});

async function start(opts: Record<string, unknown> = {}) {
  const app = await createServer({ modelDir, logger: false, resultDir: mkdtempSync(join(dir, "results-")), ...opts });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const a = app.server.address() as { port: number };
  return { app, url: `http://127.0.0.1:${a.port}` };
}

test.serial("health, info and openapi answer", async (t) => {
  const { app, url } = await start();
  try {
    t.deepEqual(await (await fetch(`${url}/v1/health`)).json(), { status: "ok", active: 0, waiting: 0 });
    const info = await (await fetch(`${url}/v1/info`)).json();
    t.deepEqual(info.models, ["tiny"]);
    t.true(info.backends.available.ts);
    const api = await (await fetch(`${url}/v1/openapi.json`)).json();
    t.is(api.openapi, "3.0.3");
    t.truthy(api.paths["/v1/segment"].post);
  } finally {
    await app.close();
  }
});

test.serial("segment a NIfTI body, then fetch the labels from the returned URL", async (t) => {
  const { app, url } = await start();
  try {
    const body = await ctBytes([6, 40, 36]);
    const r = await fetch(`${url}/v1/segment?model=tiny&cleanupMinMl=0`, {
      method: "POST",
      body,
      headers: { "content-type": "application/octet-stream" },
    });
    t.is(r.status, 200);
    const report = await r.json();
    t.is(report.model, "tiny");
    t.regex(report.labels, /^\/v1\/results\/[0-9a-f]{32}\/labels\.nii\.gz$/);
    const lab = await fetch(url + report.labels);
    t.is(lab.status, 200);
    const vol = await readNifti(Buffer.from(await lab.arrayBuffer()));
    t.deepEqual(vol.dims, [36, 40, 6]);
    const total = Object.values(report.perClass as Record<string, { voxels: number }>).reduce((a, c) => a + c.voxels, 0);
    t.is(total, (vol.data as Uint8Array).filter((v) => v > 0).length);
    // multipart works too, and the default model is the only one
    const fd = new FormData();
    fd.append("ct", new Blob([body]), "ct.nii.gz");
    const m = await fetch(`${url}/v1/segment`, { method: "POST", body: fd });
    t.is(m.status, 200);
    t.is((await fetch(`${url}/v1/results/${"0".repeat(32)}/labels.nii.gz`)).status, 404);
  } finally {
    await app.close();
  }
});

test.serial("evaluate and components over HTTP give the library's answers", async (t) => {
  const { app, url } = await start();
  try {
    const f = JSON.parse((await import("node:fs")).readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).metrics[0];
    const g = await readNpy(sharedFixture("voxel", f.gt)),
      p = await readNpy(sharedFixture("voxel", f.pred));
    await writeNifti(join(dir, "g.nii.gz"), volumeFromArray(g.data, g.shape, f.spacing_zyx_mm));
    await writeNifti(join(dir, "p.nii.gz"), volumeFromArray(p.data, p.shape, f.spacing_zyx_mm));
    const { readFileSync } = await import("node:fs");
    const fd = new FormData();
    fd.append("gt", new Blob([readFileSync(join(dir, "g.nii.gz"))]), "g.nii.gz");
    fd.append("pred", new Blob([readFileSync(join(dir, "p.nii.gz"))]), "p.nii.gz");
    const r = await fetch(`${url}/v1/evaluate`, { method: "POST", body: fd });
    t.is(r.status, 200);
    const m = await r.json();
    t.true(Math.abs(m.perClass["1"].dice - f.per_class["1"].dice) < 1e-9);
    t.is(m.perClass["2"].hd, "inf");
    t.is(m.perClass["3"].dice, "nan");
    const c = await fetch(`${url}/v1/components?connectivity=26`, {
      method: "POST",
      body: readFileSync(join(dir, "g.nii.gz")),
      headers: { "content-type": "application/octet-stream" },
    });
    t.is(c.status, 200);
    t.true((await c.json()).count > 0);
  } finally {
    await app.close();
  }
});

test.serial("client faults are 4xx JSON; model names cannot reach the file system", async (t) => {
  const { app, url } = await start();
  try {
    const post = (path: string, body: BodyInit, type = "application/octet-stream") =>
      fetch(url + path, { method: "POST", body, headers: { "content-type": type } });
    let r = await post("/v1/segment?model=tiny", Buffer.from("not a nifti at all, just some bytes that go on for a while ...".repeat(8)));
    t.is(r.status, 400);
    t.like(await r.json(), { error: "bad_nifti" });
    for (const bad of ["../x", "/etc/passwd", "..", "a/b"]) {
      r = await post(`/v1/segment?model=${encodeURIComponent(bad)}`, await ctBytes([2, 8, 8]));
      t.is(r.status, 400, bad);
      t.like(await r.json(), { error: "bad_model" });
    }
    r = await post("/v1/segment?model=nosuch", await ctBytes([2, 8, 8]));
    t.is(r.status, 404);
    r = await post("/v1/segment?model=tiny&cleanupMinMl=-3", await ctBytes([2, 8, 8]));
    t.is(r.status, 400);
    r = await post("/v1/segment", "x", "text/plain");
    t.true(r.status === 415, String(r.status));
    r = await post("/v1/evaluate", await ctBytes([2, 8, 8]));
    t.is(r.status, 415);
    t.is((await fetch(`${url}/v1/health`)).status, 200); // still alive
  } finally {
    await app.close();
  }
});

test.serial("limits: body size, voxels, and a full queue answers 503 with Retry-After", async (t) => {
  const { app, url } = await start({ maxBodyBytes: 4096, maxVoxels: 500 });
  try {
    const r1 = await fetch(`${url}/v1/components`, {
      method: "POST",
      body: Buffer.alloc(10_000),
      headers: { "content-type": "application/octet-stream" },
    });
    t.is(r1.status, 413);
    const r2 = await fetch(`${url}/v1/components`, {
      method: "POST",
      body: await ctBytes([2, 20, 20]),
      headers: { "content-type": "application/octet-stream" },
    });
    t.is(r2.status, 413);
    t.like(await r2.json(), { error: "too_large" });
  } finally {
    await app.close();
  }
  const s = await start({ concurrency: 1, queue: 0 });
  try {
    const body = await ctBytes([12, 96, 96]);
    const send = () =>
      fetch(`${s.url}/v1/segment?model=tiny`, { method: "POST", body, headers: { "content-type": "application/octet-stream" } });
    const rs = await Promise.all([send(), send(), send()]);
    const codes = rs.map((r) => r.status).sort();
    t.true(codes.includes(200) && codes.includes(503), codes.join(","));
    const busy = rs.find((r) => r.status === 503)!;
    t.is(busy.headers.get("retry-after"), "5");
  } finally {
    await s.app.close();
  }
});

// The event loop stays free while a job runs: health answers within a fraction of the job's own
// duration (a loop blocked for the job would delay it by about the whole job; measuring against the
// job keeps the check meaningful on a loaded machine, where both slow down), and never over 2 s.
test.serial("/v1/health answers promptly while a segmentation runs", async (t) => {
  const { app, url } = await start();
  try {
    const body = await ctBytes([24, 160, 160]);
    const tJob = performance.now();
    const job = fetch(`${url}/v1/segment?model=tiny`, { method: "POST", body, headers: { "content-type": "application/octet-stream" } });
    await new Promise((r) => setTimeout(r, 150));
    let worst = 0,
      busySeen = false;
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      const h = await (await fetch(`${url}/v1/health`)).json();
      worst = Math.max(worst, performance.now() - t0);
      busySeen ||= h.active === 1;
      await new Promise((r) => setTimeout(r, 20));
    }
    t.is((await job).status, 200);
    const jobMs = performance.now() - tJob;
    t.true(busySeen, "the job was running while health was asked");
    const limit = Math.min(2000, Math.max(250, jobMs / 4));
    t.true(
      worst < limit,
      `slowest health answer ${worst.toFixed(1)} ms, limit ${limit.toFixed(0)} ms (a quarter of the job's ${jobMs.toFixed(0)} ms)`,
    );
  } finally {
    await app.close();
  }
});

test.serial("a token: required off loopback, checked on every route but health", async (t) => {
  await t.throwsAsync(createServer({ host: "0.0.0.0", modelDir, logger: false, token: "" } as never), {
    message: /refusing to listen on 0.0.0.0 without a token/,
  });
  const { app, url } = await start({ token: "s3cret" });
  try {
    t.is((await fetch(`${url}/v1/health`)).status, 200);
    t.is((await fetch(`${url}/v1/info`)).status, 401);
    t.is((await fetch(`${url}/v1/info`, { headers: { authorization: "Bearer wrong" } })).status, 401);
    t.is((await fetch(`${url}/v1/info`, { headers: { authorization: "Bearer s3cret" } })).status, 200);
  } finally {
    await app.close();
  }
});
