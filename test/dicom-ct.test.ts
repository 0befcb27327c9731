/**
 * readCt: a NIfTI file, a DICOM folder, a zip of a DICOM series (path and bytes; zipped by Python's
 * zipfile), a single DICOM file — each read as its own reader reads it; zips over the byte limit are
 * refused from their declared sizes.
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readCt } from "../lib/io/ct.js";
import { readDicomSeries } from "../lib/io/dicom.js";
import { readNifti } from "../lib/io/nifti.js";
import { DICOM_FIXTURES, dicomOrderSha256 } from "./dicom-helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "bhsd-ct-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
const manifest = JSON.parse(readFileSync(join(DICOM_FIXTURES, "manifest.json"), "utf8")) as {
  cases: { case: string; folder: string; series: { hu_sha256_int16le_slice_row_col: string; series_instance_uid: string }[] }[];
};
const sha = (c: string, s = 0) => manifest.cases.find((x) => x.case === c)!.series[s]!.hu_sha256_int16le_slice_row_col;

function zipFolder(folder: string, out: string, sub = "series/") {
  const py = spawnSync(
    "python3",
    [
      "-c",
      `
import sys, os, zipfile
with zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED) as z:
    for n in sorted(os.listdir(sys.argv[1])):
        z.write(os.path.join(sys.argv[1], n), sys.argv[3] + n)
    z.writestr("README.txt", "not a DICOM file")
`,
      folder,
      out,
      sub,
    ],
    { encoding: "utf8" },
  );
  if (py.status !== 0) throw new Error(py.stderr);
}

test("a DICOM folder, a zip of it (path and bytes) and a single DICOM file", async (t) => {
  const dir = join(DICOM_FIXTURES, "cases", "D_rle");
  const v = await readCt(dir);
  t.is(dicomOrderSha256(v), sha("D"));
  const zip = join(tmp, "d.zip");
  zipFolder(dir, zip);
  t.is(dicomOrderSha256(await readCt(zip)), sha("D"));
  t.is(dicomOrderSha256(await readCt(readFileSync(zip))), sha("D"));
  const one = await readCt(join(DICOM_FIXTURES, "cases", "A_axial", "IM-0001.dcm"));
  t.deepEqual(one.dims, [88, 100, 1]);
  const i = manifest.cases.find((x) => x.case === "I")!;
  const iz = join(tmp, "i.zip");
  zipFolder(join(DICOM_FIXTURES, i.folder), iz);
  await t.throwsAsync(readCt(iz), { message: /holds 2 series/ });
  t.is(dicomOrderSha256(await readCt(iz, { seriesUid: i.series[1]!.series_instance_uid })), sha("I", 1));
});

test("a NIfTI file reads as readNifti reads it", async (t) => {
  const p = join(DICOM_FIXTURES, "reference", "A_axial", "2_Head_5mm.nii.gz");
  const a = await readCt(p);
  const b = await readNifti(p);
  t.deepEqual(a.dims, b.dims);
  t.deepEqual(a.affine, b.affine);
  t.deepEqual(
    Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength),
    Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength),
  );
  t.deepEqual((await readCt(readFileSync(p))).dims, b.dims);
});

test("limits and arguments", async (t) => {
  const zip = join(tmp, "a.zip");
  zipFolder(join(DICOM_FIXTURES, "cases", "A_axial"), zip);
  await t.throwsAsync(readCt(zip, { maxBytes: 100_000 }), { message: /unpacks to more than options\.maxBytes = 100000/ });
  await t.throwsAsync(readCt(""), { message: /pathOrBytes/ });
  await t.throwsAsync(readCt(zip, { seriesUid: 3 as unknown as string }), { message: /options\.seriesUid/ });
  const bad = Buffer.from(readFileSync(zip));
  bad.fill(0, 200, 600);
  await t.throwsAsync(readCt(bad), { message: /<bytes>: (is a damaged zip|has a damaged entry|is not a readable zip|has an entry)/ });
  const same = await readDicomSeries(join(DICOM_FIXTURES, "cases", "A_axial"));
  t.is(dicomOrderSha256(await readCt(zip)), dicomOrderSha256(same));
});

test("a folder of symbolic links to the files (and a link loop) reads as the files do", async (t) => {
  const src = join(DICOM_FIXTURES, "cases", "B_shuffled_names");
  const links = join(tmp, "links");
  mkdirSync(join(links, "sub"), { recursive: true });
  for (const n of readdirSync(src)) symlinkSync(join(src, n), join(links, "sub", `l-${n}`));
  symlinkSync(links, join(links, "sub", "loop"));
  t.is(dicomOrderSha256(await readCt(links)), sha("B"));
});
