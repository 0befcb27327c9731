// Shared by the test/server-*.test.ts files: a real server on loopback with its own folders, a
// pointwise model, NIfTI bytes, and timing of /v1/health.
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { createServer, encodeModel, type ServeOptions } from "../lib/index.js";
import { buildHeader } from "../lib/io/nifti-header.js";
import type { DTypeName } from "../lib/types.js";
import { randomTensor } from "./ort.js";

export function tempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Three pointwise nodes, 1 → 4 → `classes` channels (Conv, Relu, Conv), as ONNX bytes. */
export function pointwiseBytes(classes: number): Uint8Array {
  const w1 = randomTensor([4, 1, 1, 1, 1], 1),
    w2 = randomTensor([classes, 4, 1, 1, 1], 2);
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

/** A model folder holding `tiny`: 1 → 4 → 6 channels, pointwise (patch 4 × 32 × 32). */
export function modelFolder(): string {
  const dir = join(tempDir("bhsd-srvm-"), "models");
  mkdirSync(dir, { recursive: true });
  const bytes = pointwiseBytes(6);
  writeFileSync(join(dir, "tiny.onnx"), bytes);
  writeFileSync(join(dir, "tiny.json"), JSON.stringify({ patchSize: [4, 32, 32] }));
  return dir;
}

export interface Running {
  url: string;
  resultDir: string;
  close: () => Promise<void>;
}

export async function start(opts: ServeOptions = {}): Promise<Running> {
  const resultDir = opts.resultDir ?? tempDir("bhsd-res-");
  const app = await createServer({ logger: false, resultDir, ...opts });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const a = app.server.address() as { port: number };
  return { url: `http://127.0.0.1:${a.port}`, resultDir, close: () => app.close() };
}

/**
 * NIfTI-1 bytes (x fastest, dims [nx, ny, nz]) of `data`, gzipped unless `gzip` is false. The
 * header comes from the package's writer; the voxel bytes follow at offset 352.
 */
export function nifti(
  data: ArrayBufferView,
  dims: [number, number, number],
  dtype: DTypeName,
  spacing: [number, number, number] = [1, 1, 1],
  gzip = true,
): Buffer {
  const affine = [spacing[0], 0, 0, 0, 0, spacing[1], 0, 0, 0, 0, spacing[2], 0, 0, 0, 0, 1];
  const header = buildHeader({ version: 1, dims, dtype, spacing, affine, sclSlope: 0, sclInter: 0, qformCode: 1, sformCode: 1 });
  const raw = Buffer.concat([header, Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
  return gzip ? gzipSync(raw) : raw;
}

/** A random int16 CT (values about −60…140 HU) of dims [nx, ny, nz]. */
export function ctNifti(dims: [number, number, number], spacing: [number, number, number] = [0.5, 0.5, 5]): Buffer {
  const r = randomTensor([dims[2], dims[1], dims[0]], 5);
  return nifti(
    Int16Array.from(r.data, (v) => Math.round(v * 100 + 40)),
    dims,
    "int16",
    spacing,
  );
}

export const octet = { "content-type": "application/octet-stream" };

/** One /v1/health round trip, in ms. */
export async function healthMs(url: string): Promise<number> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/health`);
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`health answered ${r.status}`);
  return performance.now() - t0;
}

/** The slowest of `n` health round trips on an idle server: what "prompt" means on this machine now. */
export async function healthBaseline(url: string, n = 10): Promise<number> {
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, await healthMs(url));
  return worst;
}

/** Polls /v1/health every `everyMs` until `until` settles; returns the slowest answer (ms) and how many were asked. */
export async function pollHealth(url: string, until: Promise<unknown>, everyMs = 20): Promise<{ worst: number; count: number }> {
  let done = false;
  until.then(
    () => (done = true),
    () => (done = true),
  );
  let worst = 0,
    count = 0;
  while (!done) {
    worst = Math.max(worst, await healthMs(url));
    count++;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return { worst, count };
}

export function readJson(path: string): unknown {
  return JSON.parse(readFileSync(path, "utf8"));
}
