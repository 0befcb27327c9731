/**
 * Structurally valid but hostile DICOM series and zips, from an attacker's review (each built by
 * pydicom from the A_axial fixture, or by Python's zipfile): what a byte-mutation fuzzer does not
 * reach. Each was read as a wrong volume, or cost memory, before; now each is refused naming the
 * file and the problem: a JPEG Lossless stream whose decoder-visible frame hides behind an unknown
 * marker, a RescaleIntercept that is not a number (read as 0: every voxel 1024 HU high), slices
 * shifted sideways in mid-series, positions and rescales past what a volume holds, two studies
 * under one SeriesInstanceUID, end slices of another size (dropped as localizers), a multi-valued
 * NumberOfFrames, a zip entry failing its CRC, folders deeper than the walk goes; and a gap named
 * where it is.
 */
import test from "ava";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readCt, readDicomSeries } from "../lib/index.js";
import { DICOM_FIXTURES, pydicomPython, runPython } from "./dicom-helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "bhsd-dcm-hostile-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

// pydicom 2.3 (Debian's python3-pydicom) writes each scenario as a copy of the 20-slice series
const MAKE = `
import glob, json, os, shutil, struct, sys, warnings, zipfile
import pydicom
from pydicom.encaps import encapsulate
warnings.simplefilter("ignore")
src_dir, out = sys.argv[1], sys.argv[2]
src = sorted(glob.glob(os.path.join(src_dir, "cases", "A_axial", "*.dcm")))
def series(name, edit):
    ds = [pydicom.dcmread(f) for f in src]
    files = list(src)
    edit(ds, files)
    d = os.path.join(out, name); os.makedirs(d)
    for f, x in zip(files, ds): x.save_as(os.path.join(d, os.path.basename(f)))
def zigzag(ds, files):
    p = ds[9].ImagePositionPatient; ds[9].ImagePositionPatient = [p[0] + 10, p[1], p[2]]
def huge_ipp(ds, files):
    del ds[3:]; del files[3:]
    for x, z in zip(ds, ["-1e308", "0", "1e308"]): x.ImagePositionPatient = ["-84.5", "-84", z]
def huge_slope(ds, files):
    for x in ds: x.RescaleSlope = "1e300"
def two_studies(ds, files):
    for i, x in enumerate(ds):
        if i % 2: x.StudyInstanceUID = "2.25.1111"; x.FrameOfReferenceUID = "2.25.2222"
def size_at_end(ds, files):
    for x in ds[-3:]: x.Rows = 99; x.PixelData = x.PixelData[: 99 * 88 * 2]
def frames(ds, files):
    for x in ds: x.NumberOfFrames = ["1", "5"]
def gap(ds, files):
    del ds[7]; del files[7]
def jitter(ds, files):
    for i, x in enumerate(ds[1:-1]):
        p = x.ImagePositionPatient; x.ImagePositionPatient = [p[0] + (0.3 if i % 2 else -0.3), p[1], p[2]]
def comma(ds, files):
    for x in ds: x.RescaleIntercept = "-1024"
for name, edit in [("zigzag", zigzag), ("huge_ipp", huge_ipp), ("huge_slope", huge_slope), ("two_studies", two_studies),
                   ("size_at_end", size_at_end), ("frames", frames), ("gap", gap), ("comma", comma), ("jitter", jitter)]:
    series(name, edit)
# a decimal comma in the intercept's text (same length: the element's bytes replaced)
for f in glob.glob(os.path.join(out, "comma", "*.dcm")):
    b = open(f, "rb").read()
    tag = b"\\x28\\x00\\x52\\x10DS\\x06\\x00-1024 "
    assert b.count(tag) == 1, f
    open(f, "wb").write(b.replace(tag, tag[:8] + b"-10,24"))
# JPEG Lossless: SOI, an unknown marker FF01, a 200x200 frame the decoder takes, then (where a
# walk that reads FF01's "length" lands) a frame of the image's own size
jd = pydicom.dcmread(os.path.join(src_dir, "cases", "E_jpeg_lossless", "IM-0001.dcm"))
R, C = jd.Rows, jd.Columns
sof = lambda w, h: b"\\xff\\xc3" + struct.pack(">HBHHB", 11, 16, h, w, 1) + b"\\x01\\x11\\x00"
dht = b"\\xff\\xc4" + struct.pack(">H", 20) + b"\\x00" + bytes([1] + [0] * 15) + b"\\x00"
sos = b"\\xff\\xda" + struct.pack(">HB", 8, 1) + b"\\x01\\x00" + b"\\x01\\x00\\x00"
s = bytearray(b"\\xff\\xd8\\xff\\x01") + sof(200, 200) + dht + sos
target = 4 + 0xFFC3
s += b"\\x00" * (target - len(s))
s += sof(C, R) + b"\\xff\\xd9"
if len(s) % 2: s += b"\\x00"
jd.PixelData = encapsulate([bytes(s)])
jd["PixelData"].VR = "OB"
jd.save_as(os.path.join(out, "jpeg_sof.dcm"))
# a stored zip of the series, one byte of a slice's pixels changed after its CRC was written
zp = os.path.join(out, "flipped.zip")
with zipfile.ZipFile(zp, "w", zipfile.ZIP_STORED) as z:
    for f in src: z.write(f, "series/" + os.path.basename(f))
b = bytearray(open(zp, "rb").read())
name = b"series/IM-0010.dcm"
i = b.index(name) + len(name)
b[i + 14000] ^= 0x40
open(zp, "wb").write(b)
# a zip whose first entry names compression method 99 (refused by the zip reader)
zb = os.path.join(out, "badmethod.zip")
with zipfile.ZipFile(zb, "w", zipfile.ZIP_DEFLATED) as z:
    for f in src: z.write(f, "series/" + os.path.basename(f))
b = bytearray(open(zb, "rb").read())
cd = b.index(b"PK\\x01\\x02"); struct.pack_into("<H", b, cd + 10, 99); struct.pack_into("<H", b, 8, 99)
open(zb, "wb").write(b)
print(json.dumps("ok"))
`;

const made = (() => {
  let done = false;
  return () => {
    if (!done) runPython<string>(MAKE, [DICOM_FIXTURES, tmp]);
    done = true;
  };
})();
const py = pydicomPython() ? test.serial : test.skip;

py("hostile series are refused naming the file and the problem (each was read as a wrong volume before)", async (t) => {
  made();
  const cases: [string, RegExp][] = [
    ["zigzag", /has slice 10 of 20 \(file .*IM-0010\.dcm\) 10\.000 mm off the line through the first and last slices' positions/],
    ["huge_ipp", /IM-0001\.dcm has ImagePositionPatient -84\.5\\-84\\-1e\+308 \(within ±10⁶ mm expected\)/],
    ["huge_slope", /has RescaleSlope 1e\+300 and RescaleIntercept 0, which take its 16-bit values past what a float32 holds/],
    ["two_studies", /holds images of 2 StudyInstanceUIDs \(.*2\.25\.1111.*\) under one SeriesInstanceUID; they are not one volume/],
    ["size_at_end", /mixes image sizes: 17 × \(88×100, .*\); 3 × \(88×99, /],
    ["frames", /has NumberOfFrames "1\\\\5" \(single-frame images expected/],
    ["comma", /has RescaleIntercept "-10,24" \(a number expected\)/],
    // the missing slice's gap is named, not the first gap that differs from the mean
    [
      "gap",
      /has missing slices: gaps between slice positions range from 5\.000 to 10\.000 mm \(first uneven gap of 10\.000 mm after slice 7 of 19/,
    ],
  ];
  for (const [name, re] of cases) await t.throwsAsync(readCt(join(tmp, name)), { message: re }, name);
  // positions rounded by a scanner (±0.3 mm in-plane on 2 mm pixels, first and last in line) are one volume still
  t.deepEqual((await readCt(join(tmp, "jitter"))).dims, [88, 100, 20]);
});

py(
  "a JPEG Lossless stream whose decoder-visible frame hides behind an unknown marker is refused (it read as another image's pixels)",
  async (t) => {
    made();
    for (const workers of [0, 1])
      await t.throwsAsync(readDicomSeries([join(tmp, "jpeg_sof.dcm")], { workers }), {
        message: /jpeg_sof\.dcm: has JPEG pixel data with marker 0xFF01 before its frame header/,
      });
  },
);

py("a zip entry that fails its CRC-32 is refused, and a failing zip leaves no file descriptor open", async (t) => {
  made();
  await t.throwsAsync(readCt(join(tmp, "flipped.zip")), {
    message: /flipped\.zip: has entry "series\/IM-0010\.dcm" whose bytes fail its CRC-32 check \(a damaged zip\)/,
  });
  const fds = () => readdirSync("/proc/self/fd").length;
  await t.throwsAsync(readCt(join(tmp, "badmethod.zip")));
  const before = fds();
  for (let i = 0; i < 10; i++) await t.throwsAsync(readCt(join(tmp, "badmethod.zip")), { message: /compression method/ });
  await new Promise((r) => setTimeout(r, 50));
  t.true(fds() <= before + 1, `${before} → ${fds()} open descriptors`);
});

test("folders more than 8 below the one given are not walked, and named when nothing else is found", async (t) => {
  let d = join(tmp, "deep");
  for (let i = 1; i <= 10; i++) d = join(d, `d${i}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "x.txt"), "a viewer's file");
  await t.throwsAsync(readDicomSeries(join(tmp, "deep")), {
    message: /deep: holds no file within 8 folders of it \(folders deeper down, such as .*d9, are not walked/,
  });
  // beside a series (a patient CD: DICOM/ and a viewer's deep folders), the series is read
  cpSync(join(DICOM_FIXTURES, "cases", "A_axial"), join(tmp, "deep", "DICOM"), { recursive: true });
  t.deepEqual((await readDicomSeries(join(tmp, "deep"))).dims, [88, 100, 20]);
});
