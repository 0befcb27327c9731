/**
 * The REST service takes a zip of a DICOM series where it takes a CT NIfTI: /v1/segment on the zip
 * of fixture case A gives the same report as on dcm2niix's NIfTI conversion of that series (the
 * outside reference: same voxels, same affine); a damaged zip is a 400 bad_dicom.
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "../lib/index.js";
import { DICOM_FIXTURES } from "./dicom-helpers.js";
import { ROOT } from "./paths.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-dcmsrv-"));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test("/v1/segment: a zip of a DICOM series reads as dcm2niix's NIfTI of it; a damaged zip is 400 bad_dicom", async (t) => {
  t.timeout(300_000);
  const modelDir = join(dir, "models");
  mkdirSync(modelDir);
  copyFileSync(join(ROOT, "models", "demo.onnx"), join(modelDir, "demo.onnx"));
  copyFileSync(join(ROOT, "models", "demo.json"), join(modelDir, "demo.json"));
  const zip = join(dir, "a.zip");
  const py = spawnSync(
    "python3",
    [
      "-c",
      `
import sys, os, zipfile
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED) as z:
    for n in sorted(os.listdir(sys.argv[1])): z.write(os.path.join(sys.argv[1], n), "A/" + n)
`,
      join(DICOM_FIXTURES, "cases", "A_axial"),
      zip,
    ],
    { encoding: "utf8" },
  );
  t.is(py.status, 0, py.stderr);
  const app = await createServer({ modelDir, logger: false, resultDir: mkdtempSync(join(dir, "results-")) });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  try {
    const post = (body: Uint8Array) =>
      fetch(`${url}/v1/segment?model=demo`, { method: "POST", body, headers: { "content-type": "application/octet-stream" } });
    const rz = await post(readFileSync(zip));
    t.is(rz.status, 200, await rz.clone().text());
    const rn = await post(readFileSync(join(DICOM_FIXTURES, "reference", "A_axial", "2_Head_5mm.nii.gz")));
    t.is(rn.status, 200);
    const a = (await rz.json()) as { perClass: Record<string, { voxels: number }>; components: unknown[] };
    const b = (await rn.json()) as { perClass: Record<string, { voxels: number }>; components: unknown[] };
    t.deepEqual(a.perClass, b.perClass);
    t.is(a.components.length, b.components.length);
    const bad = Buffer.from(readFileSync(zip));
    bad.fill(0x41, 100, 3000);
    const rb = await post(bad);
    t.is(rb.status, 400);
    t.is(((await rb.json()) as { error: string }).error, "bad_dicom");
  } finally {
    await app.close();
  }
});

test("bhsd view's case loader takes a DICOM folder and serves it to the page as a NIfTI equal to dcm2niix's", async (t) => {
  const { default: Fastify } = await import("fastify");
  const { registerViewerCase } = await import("../lib/server/viewer.js");
  const { readNifti } = await import("../lib/io/nifti.js");
  const { compareWorld } = await import("./dicom-helpers.js");
  const app = Fastify();
  await registerViewerCase(app, { ct: join(DICOM_FIXTURES, "cases", "H_oblique") });
  const r = await app.inject({ method: "GET", url: "/viewer/case/ct" });
  t.is(r.statusCode, 200);
  const served = await readNifti(new Uint8Array(r.rawPayload));
  const ref = await readNifti(join(DICOM_FIXTURES, "reference", "H_oblique", "2_Head_5mm.nii.gz"));
  const cmp = compareWorld(served, ref);
  t.is(cmp.maxDiff, 0);
  t.true(cmp.worldMm < 1e-4, `affine within 1e-4 mm (${cmp.worldMm})`);
  t.is(cmp.outside, 0);
  await app.close();
});
