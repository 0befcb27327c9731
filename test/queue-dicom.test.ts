/**
 * Issue 20: a batch of DICOM series folders beside NIfTI files. A worker segments each DICOM
 * folder exactly as it segments dcm2niix's NIfTI conversion of the same series (the outside
 * reference in test/fixtures/dicom/reference), and a resubmission redoes nothing.
 */
import test from "ava";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readNifti } from "../lib/io/nifti.js";
import { ROOT } from "./helpers.js";
import { bhsdRun, NO_REDIS, RedisServer, startWorker } from "./queue-helpers.js";

const t = NO_REDIS ? test.skip : test.serial;
const title = (s: string) => (NO_REDIS ? `${s} (skipped: ${NO_REDIS})` : s);
const FIX = join(ROOT, "test", "fixtures", "dicom");

t(title("DICOM series folders in a batch: labels equal those of dcm2niix's conversion; folders hashed for idempotency"), async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-queue-"));
  const redis = await RedisServer.start();
  const w = startWorker(redis.url);
  try {
    const data = join(dir, "data"),
      out = join(dir, "out");
    mkdirSync(data);
    for (const c of ["A_axial", "D_rle"]) {
      cpSync(join(FIX, "cases", c), join(data, c), { recursive: true });
      copyFileSync(join(FIX, "reference", c, "2_Head_5mm.nii.gz"), join(data, `${c}_dcm2niix.nii.gz`));
    }
    await w.waitLine(/^worker \S+ on queue/);
    const sub = await bhsdRun([
      "batch",
      "submit",
      "--redis",
      redis.url,
      "--data",
      data,
      "--model",
      "demo",
      "--out",
      out,
      "--wait",
      "--json",
    ]);
    t.is(sub.code, 0, sub.stdout + sub.stderr);
    const s = JSON.parse(sub.stdout);
    t.deepEqual(s.cases.map((c: { case: string }) => c.case).sort(), ["A_axial", "A_axial_dcm2niix", "D_rle", "D_rle_dcm2niix"]);
    t.deepEqual(s.counts, { completed: 4 });
    // the two dcm2niix files are the same bytes (A and D hold the same pixels): one job, one label file
    const labels = new Map<string, string>(s.cases.map((c: { case: string; result: { labels: string } }) => [c.case, c.result.labels]));
    t.is(labels.get("A_axial_dcm2niix"), labels.get("D_rle_dcm2niix"));
    for (const c of ["A_axial", "D_rle"]) {
      t.is(labels.get(c), join(out, `${c}.nii.gz`));
      const [a, b] = [await readNifti(labels.get(c)!), await readNifti(labels.get(`${c}_dcm2niix`)!)];
      t.deepEqual(a.dims, b.dims);
      t.true(
        Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(
          Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength),
        ),
        `${c}: labels from the DICOM folder differ from those of dcm2niix's NIfTI`,
      );
    }
    const again = await bhsdRun(["batch", "submit", "--redis", redis.url, "--data", data, "--model", "demo", "--out", out]);
    t.regex(again.stdout, /4 cases, 0 queued, 4 already done/);
    w.kill("SIGTERM");
    t.is((await w.exited).code, 0);
    t.is(w.count(/^taken /), 3);
  } finally {
    w.kill("SIGKILL");
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
