import test from "ava";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync as gzipSyncOf } from "node:zlib";
import { readNifti, readNiftiHeader, writeNifti, readNpy, setBackend } from "../lib/index.js";
import type { Volume } from "../lib/types.js";
import { backendsUnderTest, NIFTI_FIXTURES } from "./helpers.js";

// Files written by nibabel (test/fixtures/nifti/make_fixtures.py) and what nibabel read back.
interface Case {
  file: string;
  dims: number[];
  spacing: number[];
  affine: number[];
  datatype: string;
  scaled: boolean;
}
const expected = JSON.parse(readFileSync(join(NIFTI_FIXTURES, "expected.json"), "utf8")) as { cases: Record<string, Case> };
const tmp = mkdtempSync(join(tmpdir(), "bhsd-nifti-"));

function assertGeometry(t: import("ava").ExecutionContext, v: Volume, c: Case) {
  t.deepEqual(v.dims, c.dims);
  v.spacing.forEach((s, i) =>
    t.true(Math.abs(s - c.spacing[i]!) <= 1e-6 * Math.max(1, c.spacing[i]!), `spacing[${i}] ${s} vs ${c.spacing[i]}`),
  );
  v.affine.forEach((a, i) =>
    t.true(Math.abs(a - c.affine[i]!) <= 1e-5 * Math.max(1, Math.abs(c.affine[i]!)), `affine[${i}] ${a} vs ${c.affine[i]}`),
  );
}

function sameValues(a: ArrayLike<number>, b: ArrayLike<number>): string | undefined {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return `voxel ${i}: ${a[i]} vs ${b[i]}`;
  return undefined;
}

for (const { name: backend } of backendsUnderTest()) {
  for (const [name, c] of Object.entries(expected.cases)) {
    test.serial(`${backend}: reads ${c.file} as nibabel does`, async (t) => {
      setBackend(backend);
      const path = join(NIFTI_FIXTURES, c.file);
      const want = await readNpy(join(NIFTI_FIXTURES, `${name}.expected.npy`));
      for (const src of [path, readFileSync(path)]) {
        const v = await readNifti(src);
        assertGeometry(t, v, c);
        t.is(v.meta?.datatype, c.datatype);
        t.is(v.meta?.scaled, c.scaled);
        t.is(v.data.constructor, c.scaled ? Float32Array : want.data.constructor);
        t.is(sameValues(v.data, want.data), undefined);
      }
    });
  }
}

for (const [name, c] of Object.entries(expected.cases)) {
  test(`writeNifti round-trips ${c.file}: voxel bytes equal the file's, geometry kept`, async (t) => {
    const v = await readNifti(join(NIFTI_FIXTURES, c.file));
    const raw = await readNpy(join(NIFTI_FIXTURES, `${name}.raw.npy`));
    for (const ext of [".nii", ".nii.gz"]) {
      const out = join(tmp, `${name}${ext}`);
      await writeNifti(out, v);
      let bytes = readFileSync(out);
      if (ext === ".nii.gz") bytes = gunzipSync(bytes);
      const voxOffset = new DataView(bytes.buffer, bytes.byteOffset).getFloat32(108, true); // NIfTI-1 vox_offset
      const stored = bytes.subarray(voxOffset);
      t.deepEqual(Buffer.from(stored), Buffer.from(raw.data.buffer, raw.data.byteOffset, raw.data.byteLength));
      const back = await readNifti(out);
      assertGeometry(t, back, c);
      t.is(sameValues(back.data, v.data), undefined);
    }
  });
}

test("readNiftiHeader gives the geometry without reading the voxels", async (t) => {
  const c = expected.cases.ct_int16_scl!;
  const h = await readNiftiHeader(join(NIFTI_FIXTURES, c.file));
  t.deepEqual(h.dims, c.dims as [number, number, number]);
  t.is(h.datatype, "int16");
  t.is(h.voxelBytes, c.dims.reduce((a, b) => a * b) * 2);
});

test("writeNifti writes NIfTI-2 on request and for dims past 32767", async (t) => {
  const v = await readNifti(join(NIFTI_FIXTURES, "labels_uint8.nii.gz"));
  const out = join(tmp, "v2.nii");
  await writeNifti(out, v, { version: 2 });
  t.is(readFileSync(out).readInt32LE(0), 540);
  const back = await readNifti(out);
  t.is(back.meta?.version, 2);
  t.is(sameValues(back.data, v.data), undefined);
  const long: Volume = {
    data: new Uint8Array(40000),
    dims: [40000, 1, 1],
    spacing: [1, 1, 1],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  };
  await writeNifti(join(tmp, "long.nii"), long);
  t.is((await readNifti(join(tmp, "long.nii"))).meta?.version, 2);
});

test("writeNifti refuses values the datatype cannot hold and leaves no file behind", async (t) => {
  const v: Volume = {
    data: new Float32Array([0, 1, 300]),
    dims: [3, 1, 1],
    spacing: [1, 1, 1],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  };
  const out = join(tmp, "bad.nii");
  await t.throwsAsync(writeNifti(out, v, { datatype: "uint8" }), { message: /voxel 2 holds 300/ });
  t.throws(() => readFileSync(out));
  await t.throwsAsync(writeNifti(out, { ...v, dims: [2, 1, 1] }), {
    message: /volume.data has 3 voxels but volume.dims \[2, 1, 1\] need 2/,
  });
  await t.throwsAsync(writeNifti(out, v, { gzipLevel: 12 }), {
    message: /Expected an integer from 0 to 9 for options.gzipLevel but received number 12/,
  });
});

// nibabel, where it is installed, reads what writeNifti wrote: an outside check of the writer.
const nibabel = (() => {
  for (const py of ["/usr/bin/python3", "python3"]) {
    try {
      execFileSync(py, ["-c", "import nibabel"], { stdio: "ignore" });
      return py;
    } catch {
      // not this interpreter: try the next
    }
  }
  return undefined;
})();
(nibabel ? test : test.skip)("nibabel reads writeNifti's files with the same geometry and voxels", async (t) => {
  const v = await readNifti(join(NIFTI_FIXTURES, "qform_float32.nii"));
  const ct = await readNifti(join(NIFTI_FIXTURES, "ct_int16_scl.nii.gz"));
  await writeNifti(join(tmp, "nib_q.nii.gz"), v);
  await writeNifti(join(tmp, "nib_ct.nii"), ct);
  const script = `
import json, sys, nibabel as nib, numpy as np
out = {}
for p in sys.argv[1:]:
    img = nib.load(p)
    out[p] = {"affine": img.affine.flatten().tolist(), "dims": list(img.shape), "data": np.asarray(img.get_fdata(dtype=np.float64), np.float32).transpose(2,1,0).flatten().tolist(), "dtype": str(img.get_data_dtype())}
print(json.dumps(out))`;
  const res = JSON.parse(
    execFileSync(nibabel!, ["-c", script, join(tmp, "nib_q.nii.gz"), join(tmp, "nib_ct.nii")], { encoding: "utf8" }),
  ) as Record<string, { affine: number[]; dims: number[]; data: number[]; dtype: string }>;
  for (const [p, vol] of [
    [join(tmp, "nib_q.nii.gz"), v],
    [join(tmp, "nib_ct.nii"), ct],
  ] as const) {
    const r = res[p]!;
    t.deepEqual(r.dims, vol.dims);
    r.affine.forEach((a, i) => t.true(Math.abs(a - vol.affine[i]!) < 1e-4, `affine[${i}]`));
    t.is(sameValues(Float32Array.from(r.data), vol.data), undefined);
  }
  t.is(res[join(tmp, "nib_ct.nii")]!.dtype, "int16");
});

test("writeNifti refuses scalings and voxels that cannot round-trip, and leaves no file behind", async (t) => {
  const affine = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
  const v: Volume = { data: new Float32Array([0, 1.5, -3, 1000]), dims: [4, 1, 1], spacing: [1, 1, 1], affine };
  const out = join(tmp, "scaled_bad.nii");
  const refusals: [Parameters<typeof writeNifti>[2], RegExp][] = [
    // issue 18: read back as 0 (slope overflows float32 to Infinity, data stored as 0) and Infinity
    [
      { datatype: "float32", sclSlope: 1e300 },
      /options.sclSlope 1e\+300 cannot be stored in NIfTI-1's float32 scl_slope \(it would read back as Infinity\)/,
    ],
    [
      { datatype: "float32", sclSlope: 1e-45 },
      /options.sclSlope 1e-45 cannot be stored in NIfTI-1's float32 scl_slope \(it would read back as 1.401298464324817e-45\)/,
    ],
    [{ datatype: "int16", sclSlope: 1e-40 }, /options.sclSlope 1e-40 cannot be stored/],
    [{ datatype: "float32", sclSlope: 1, sclInter: 1e39 }, /options.sclInter 1e\+39 cannot be stored in NIfTI-1's float32 scl_inter/],
    [{ datatype: "float32", sclSlope: NaN }, /Expected a finite number for options.sclSlope but received number NaN/],
    [{ datatype: "float32", sclSlope: Infinity }, /Expected a finite number for options.sclSlope/],
    [{ datatype: "float32", sclInter: -Infinity }, /Expected a finite number for options.sclInter/],
    // the slope fits, the data does not: 1000 / 1e-36 overflows float32; 1.5 / 3e38 underflows it (a subnormal keeps a few bits)
    [
      { datatype: "float32", sclSlope: 1e-36 },
      /voxel 3 holds 1000, which overflows float32 with slope 1.*e-36 and intercept 0 \(stored as Infinity\)/,
    ],
    [
      { datatype: "float32", sclSlope: 3e38 },
      /voxel 1 holds 1.5, which underflows float32 with slope 3.0000000054977558e\+38 and intercept 0 \(stored as 4.99.*e-39\)/,
    ],
    [{ datatype: "int8", sclSlope: 2 }, /voxel 3 holds 1000, which int8 with slope 2 and intercept 0 cannot store/],
  ];
  for (const [opts, message] of refusals) {
    await t.throwsAsync(writeNifti(out, v, opts), { message }, JSON.stringify(opts));
    t.throws(() => readFileSync(out), undefined, `${JSON.stringify(opts)} left a file`);
  }
  // float64 voxels past float32's range, and NaN in an integer type, were stored as Infinity and 0
  await t.throwsAsync(writeNifti(out, { ...v, data: new Float64Array([0, 1e39, 0, 0]) }, { datatype: "float32" }), {
    message: /voxel 1 holds 1e\+39, which overflows float32 \(stored as Infinity\)/,
  });
  await t.throwsAsync(writeNifti(out, { ...v, data: new Float32Array([0, NaN, 0, 0]) }, { datatype: "int16" }), {
    message: /voxel 1 holds NaN, which int16 cannot store \(an integer type has no NaN\)/,
  });
  t.throws(() => readFileSync(out));
  // NaN and infinities themselves are float data and are kept
  await writeNifti(out, { ...v, data: new Float32Array([NaN, Infinity, -Infinity, 2]) }, { datatype: "float32", sclSlope: 2 });
  t.deepEqual(Array.from((await readNifti(out)).data), [NaN, Infinity, -Infinity, 2]);
});

(nibabel ? test : test.skip)(
  "nibabel reads scaled files as written: float32 rounding of the header's slope and intercept applied",
  async (t) => {
    const affine = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    const data = new Float32Array(60).map((_, i) => (i * 7.3 - 200) / 3);
    const v: Volume = { data, dims: [5, 4, 3], spacing: [1, 1, 1], affine };
    const cases: [string, Parameters<typeof writeNifti>[2]][] = [
      ["s_int16.nii", { datatype: "int16", sclSlope: 0.1, sclInter: -1024.3 }],
      ["s_float32.nii.gz", { datatype: "float32", sclSlope: 2.5e-30, sclInter: 0.7 }],
      ["s_uint8.nii", { datatype: "uint8", sclSlope: 0.7, sclInter: -100 }],
      ["s_v2_int32.nii", { datatype: "int32", sclSlope: 1e-3, sclInter: 0.1, version: 2 }],
    ];
    const paths = cases.map(([f]) => join(tmp, f));
    for (const [i, [, opts]] of cases.entries()) await writeNifti(paths[i]!, v, opts);
    const script = `
import json, sys, nibabel as nib, numpy as np
out = {}
for p in sys.argv[1:]:
    img = nib.load(p)
    out[p] = np.asarray(img.get_fdata(dtype=np.float64)).transpose(2,1,0).flatten().tolist()
print(json.dumps(out))`;
    const nib = JSON.parse(execFileSync(nibabel!, ["-c", script, ...paths], { encoding: "utf8" })) as Record<string, number[]>;
    for (const [i, [f, opts]] of cases.entries()) {
      const ours = await readNifti(paths[i]!);
      const theirs = nib[paths[i]!]!;
      // the reader rounds nibabel's float64 values once to float32
      t.is(sameValues(ours.data, Float32Array.from(theirs)), undefined, f);
      // and what was written comes back within half a quantisation step (integer types) or float32 rounding
      const step = opts!.datatype!.startsWith("float") ? 0 : Math.abs(opts!.sclSlope!) / 2;
      for (let k = 0; k < data.length; k++) {
        const err = Math.abs(theirs[k]! - data[k]!);
        t.true(
          err <= step * (1 + 1e-6) + 4e-7 * Math.abs(data[k]!) + 1e-6,
          `${f} voxel ${k}: wrote ${data[k]}, nibabel reads ${theirs[k]}`,
        );
      }
    }
  },
);

test.serial("native: a read into reused engine memory holds the file's voxels and nothing of what the memory held", async (t) => {
  // large reads go into engine blocks that are not cleared first (every byte is read or converted
  // into them): blocks of the raw and the scaled arrays' sizes are dirtied and handed back first.
  // writeNifti stores these values as int16 with the slope and intercept (each is stored × 0.5 − 3
  // exactly), so the scaled read must give them back exactly
  if (!backendsUnderTest().some((b) => b.name === "native")) return t.log("native backend not under test here");
  setBackend("native");
  const { allocArray } = await import("../lib/volume.js");
  const { releaseEngineArray } = await import("../lib/backends/index.js");
  const dims: [number, number, number] = [64, 64, 16];
  const n = dims[0] * dims[1] * dims[2];
  const raw = new Int16Array(n).map((_, i) => ((i * 37) % 4000) - 1024);
  const [slope, inter] = [0.5, -3];
  for (const ext of [".nii", ".nii.gz"]) {
    const path = join(tmp, `dirty${ext}`);
    await writeNifti(
      path,
      { data: raw, dims, spacing: [1, 1, 1], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] },
      { sclSlope: slope, sclInter: inter },
    );
    for (const bytes of [2 * n, 4 * n]) {
      const dirty = allocArray("uint8", bytes) as Uint8Array;
      dirty.fill(0xa5);
      releaseEngineArray(dirty);
    }
    const v = await readNifti(path);
    t.is(v.data.constructor, Float32Array);
    let bad = -1;
    for (let i = 0; i < n && bad < 0; i++) if (v.data[i] !== raw[i]) bad = i;
    t.is(bad, -1, `voxel ${bad}: ${v.data[bad]} vs ${raw[bad]}`);
  }
});

test.serial(
  "native gunzip: members split at odd bytes, a skip that ends inside a voxel, 1 MiB pieces; raw bytes and scaled voxels from a file or from bytes; ends early or broken",
  async (t) => {
    if (!backendsUnderTest().some((b) => b.name === "native")) return t.log("native backend not under test here");
    const { getBackend } = await import("../lib/backends/index.js");
    const be = getBackend("native");
    if (!be.gunzip) return t.fail("the native backend has no gunzip");
    const { gzipSync, crc32, deflateRawSync } = await import("node:zlib");
    const { open, writeFile } = await import("node:fs/promises");
    // a gzip member of exactly `length` bytes: its header padded with a comment (FLG.FCOMMENT, RFC 1952)
    const memberOf = (data: Uint8Array, length: number) => {
      const body = deflateRawSync(data),
        trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(crc32(data), 0);
      trailer.writeUInt32LE(data.length, 4);
      const comment = Buffer.alloc(length - 10 - 1 - body.length - 8, 0x61);
      return Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0x10, 0, 0, 0, 0, 0, 0xff]), comment, Buffer.from([0]), body, trailer]);
    };
    const n = 3 * (1 << 19) + 7; // three 1 MiB pieces of int16 and a partial one
    const raw = new Int16Array(n).map((_, i) => ((i * 7919) % 65536) - 32768);
    const skip = 355; // odd: the voxels start inside a piece, off their alignment
    const plain = Buffer.concat([Buffer.alloc(skip, 0xee), Buffer.from(raw.buffer)]);
    // Node's gzip (zlib's deflate) as several members, cut at odd bytes (one inside the skipped
    // bytes, others inside voxels), then bytes that do not start another member (ignored, as GNU
    // gzip does); the first member 1 MiB less one byte long, so that the second one's two magic
    // bytes straddle the reader's first 1 MiB read
    const cuts = [0, 101, 1_000_003, 2_000_001, plain.length];
    const members = Buffer.concat([
      memberOf(plain.subarray(0, 101), (1 << 20) - 1),
      ...cuts.slice(2).map((c, i) => gzipSync(plain.subarray(cuts[i + 1], c), { level: 1 })),
    ]);
    t.true(gunzipSync(members).equals(plain)); // well-formed: Node's gunzip reads it whole
    const gz = Buffer.concat([members, Buffer.from("not a member")]);
    const path = join(tmp, "members.gz");
    await writeFile(path, gz);
    const fh = await open(path, "r");
    try {
      const [slope, inter] = [0.1, -1024.3];
      for (const source of [fh.fd, new Uint8Array(gz)]) {
        const what = typeof source === "number" ? "file" : "bytes";
        const out = new Float32Array(n);
        t.is(await be.gunzip(source, skip, "int16", slope, inter, out), 2 * n, what);
        let bad = -1;
        for (let i = 0; i < n && bad < 0; i++) if (out[i] !== Math.fround(raw[i]! * slope + inter)) bad = i;
        t.is(bad, -1, `${what}, scaled: voxel ${bad}`);
        const bytes = new Uint8Array(2 * n);
        t.is(await be.gunzip(source, skip, null, 1, 0, bytes), 2 * n, what);
        t.true(Buffer.from(bytes).equals(plain.subarray(skip)), `${what}, raw bytes`);
        // more asked for than the stream holds: what it holds, and no more
        const more = new Uint8Array(2 * n + 64).fill(7);
        t.is(await be.gunzip(source, skip, null, 1, 0, more), 2 * n, what);
        t.true(more.subarray(2 * n).every((v) => v === 7));
      }
      // a stream cut short: fewer bytes; a damaged one: an error that says so
      const cut = new Uint8Array(gz.subarray(0, 1_500_000)); // inside the second member's deflate blocks
      t.true((await be.gunzip(cut, skip, null, 1, 0, new Uint8Array(2 * n))) < 2 * n);
      const bad = new Uint8Array(gz);
      bad.fill(0xff, (1 << 20) + 40, (1 << 20) + 90); // inside the second member's deflate blocks
      await t.throwsAsync(be.gunzip(bad, skip, "int16", slope, inter, new Float32Array(n)), { message: /broken gzip stream/ });
    } finally {
      await fh.close();
    }
  },
);

test.serial(
  "readNifti of a .nii.gz of several members with a vox_offset inside a voxel, or with a 70 kB gzip comment, equals the .nii, on every backend",
  async (t) => {
    const dims: [number, number, number] = [37, 29, 11];
    const n = dims[0] * dims[1] * dims[2];
    const raw = new Int16Array(n).map((_, i) => ((i * 7919) % 8000) - 4000);
    const path = join(tmp, "odd.nii");
    await writeNifti(
      path,
      { data: raw, dims, spacing: [1, 1, 1], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] },
      { sclSlope: 0.5, sclInter: -3, datatype: "int16" },
    );
    const file = readFileSync(path);
    const off = file.readFloatLE(108);
    // three bytes more before the voxels, vox_offset moved past them
    const odd = Buffer.concat([file.subarray(0, off), Buffer.alloc(3), file.subarray(off)]);
    odd.writeFloatLE(off + 3, 108);
    const cuts = [0, 50, off + 1, off + 1001, odd.length];
    const gz = Buffer.concat(cuts.slice(1).map((c, i) => gzipSyncOf(odd.subarray(cuts[i], c))));
    // one member whose gzip header carries a comment (FLG.FCOMMENT, RFC 1952) longer than the prefix
    // in which a reader of bytes first looks for the NIfTI header
    const { crc32, deflateRawSync } = await import("node:zlib");
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(crc32(odd), 0);
    trailer.writeUInt32LE(odd.length, 4);
    const commented = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0x10, 0, 0, 0, 0, 0, 0xff]),
      Buffer.alloc(70_000, 0x61),
      Buffer.from([0]),
      deflateRawSync(odd),
      trailer,
    ]);
    t.true(gunzipSync(commented).equals(odd)); // a well-formed stream, as Node's gunzip reads it
    const { writeFileSync } = await import("node:fs");
    writeFileSync(join(tmp, "odd3.nii"), odd);
    writeFileSync(join(tmp, "odd3.nii.gz"), gz);
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const want = await readNifti(join(tmp, "odd3.nii"));
      for (const [what, src] of [
        ["file", join(tmp, "odd3.nii.gz")],
        ["bytes", new Uint8Array(gz)],
        ["commented bytes", new Uint8Array(commented)],
      ] as const) {
        const got = await readNifti(src);
        t.deepEqual(got.dims, want.dims);
        t.is(sameValues(got.data, want.data), undefined, `${name}, ${what}`);
      }
      t.is(sameValues(want.data, raw), undefined, `${name}: the .nii holds what was written`);
    }
  },
);

test.serial(
  "native readScaled: pread and convert on the pool's threads, float64 multiply then add as numpy does (never fused); a file that ends early rejects",
  async (t) => {
    if (!backendsUnderTest().some((b) => b.name === "native")) return t.log("native backend not under test here");
    const { getBackend } = await import("../lib/backends/index.js");
    const be = getBackend("native");
    if (!be.readScaled) return t.fail("the native backend has no readScaled");
    const { open, writeFile } = await import("node:fs/promises");
    const n = 3 * (1 << 19) + 7; // three 1 MB chunks of int16 and a partial one
    const raw = new Int16Array(n).map((_, i) => ((i * 7919) % 65536) - 32768);
    const path = join(tmp, "raw.bin");
    const offset = 352;
    await writeFile(path, Buffer.concat([Buffer.alloc(offset, 0xee), Buffer.from(raw.buffer)]));
    const fh = await open(path, "r");
    try {
      const [slope, inter] = [0.1, -1024.3];
      const out = new Float32Array(n);
      await be.readScaled(fh.fd, offset, "int16", n, slope, inter, out);
      let bad = -1;
      for (let i = 0; i < n && bad < 0; i++) if (out[i] !== Math.fround(raw[i]! * slope + inter)) bad = i;
      t.is(bad, -1, `voxel ${bad}`);
      await t.throwsAsync(be.readScaled(fh.fd, offset, "int16", n + 10, slope, inter, new Float32Array(n + 10)), {
        message: /truncated data: the file ended at byte/,
      });
      await t.throwsAsync(async () => be.readScaled!(fh.fd, offset, "int16", n, slope, inter, new Float32Array(n - 1)), {
        message: /out must be/,
      });
    } finally {
      await fh.close();
    }
  },
);

test("a volume released while writeNifti writes it: the write fails cleanly (no crash, no short file, no temporary)", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-nifti-release-"));
  const src = join(dir, "src.nii.gz");
  await writeNifti(src, {
    data: new Int16Array(128 * 128 * 32).fill(5),
    dims: [128, 128, 32],
    spacing: [1, 1, 1],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  });
  for (const name of ["copy.nii.gz", "copy.nii"]) {
    const v = await readNifti(src);
    const p = writeNifti(join(dir, name), v);
    // (what `using v` does when its block ends: the engine memory goes back, the buffer detached;
    // before, the gzip stream threw from its own internals — the process exited — and the plain
    // write renamed a 352-byte file into place)
    (v as unknown as Disposable)[Symbol.dispose]();
    await t.throwsAsync(p, { message: /volume\.data was released or transferred while .* was being written/ }, name);
  }
  t.deepEqual(readdirSync(dir), ["src.nii.gz"]);
});

test("a spacing or affine NIfTI-1's float32 cannot hold is written as version 2 (or refused for version 1); a long UTF-8 description is cut on a character", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-nifti-geom-"));
  const vol = (spacing: [number, number, number]) => ({
    data: new Uint8Array(8),
    dims: [2, 2, 2] as [number, number, number],
    spacing,
    affine: [spacing[0], 0, 0, 0, 0, spacing[1], 0, 0, 0, 0, spacing[2], 0, 0, 0, 0, 1],
  });
  for (const s of [1e-50, 1e39]) {
    const p = join(dir, `s${s}.nii`);
    await writeNifti(p, vol([s, 1, 1]));
    const back = await readNifti(p);
    // (before: NIfTI-1, spacing read back as 1 and an all-zero or infinite affine)
    t.is(back.meta!.version, 2);
    t.is(back.spacing[0], s);
    await t.throwsAsync(writeNifti(join(dir, "v1.nii"), vol([s, 1, 1]), { version: 1 }), {
      message: /cannot be stored in NIfTI-1's float32 fields/,
    });
  }
  // a rotation term too small for a normal float32 means nothing: still NIfTI-1
  const tiny = vol([1, 1, 1]);
  tiny.affine[1] = 1e-40;
  await writeNifti(join(dir, "tiny.nii"), tiny);
  t.is((await readNifti(join(dir, "tiny.nii"))).meta!.version, 1);
  // 79 "€" are 237 bytes: before, a RangeError that named nothing
  await writeNifti(join(dir, "d.nii"), vol([1, 1, 1]), { description: "€".repeat(79) });
  const raw = readFileSync(join(dir, "d.nii")).subarray(148, 228);
  t.is(Buffer.from(raw).toString("utf8").replace(/\0+$/, ""), "€".repeat(26));
});

test("a voxel volume of 0 or Infinity mm³ is refused (by every op, by the reader before the voxels); an edited meta is checked as the caller's", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-nifti-voxel-"));
  const vol = (spacing: [number, number, number]) => ({
    data: new Uint8Array(8).fill(1),
    dims: [2, 2, 2] as [number, number, number],
    spacing,
    affine: [spacing[0], 0, 0, 0, 0, spacing[1], 0, 0, 0, 0, spacing[2], 0, 0, 0, 0, 1],
  });
  // before: 0 mL and Infinity mL for 8 voxels, without a word
  const { componentStats } = await import("../lib/ops/components.js");
  for (const s of [1e-200, 1e300] as const) {
    await t.throwsAsync(componentStats(vol([s, s, 1])), { message: /here 0 mm³|here Infinity mm³/ }, String(s));
    await t.throwsAsync(writeNifti(join(dir, "x.nii"), vol([s, s, 1])), { message: /volume\.spacing/ });
  }
  // a NIfTI-2 file whose pixdim make such a voxel: refused by its header
  await writeNifti(join(dir, "ok.nii"), vol([1, 1, 1]), { version: 2 });
  const bytes = readFileSync(join(dir, "ok.nii"));
  bytes.writeDoubleLE(1e-200, 104 + 8);
  bytes.writeDoubleLE(1e-200, 104 + 16);
  writeFileSync(join(dir, "tiny.nii"), bytes);
  await t.throwsAsync(readNifti(join(dir, "tiny.nii")), { message: /pixdim .* make a voxel of 0 mm³/ });
  await t.throwsAsync(readNiftiHeader(join(dir, "tiny.nii")), { message: /voxel of 0 mm³/ });
  // the meta a reader left, edited: named, not an allocation error or a wrapped int16
  const scaled = { ...vol([1, 1, 1]), data: new Float32Array(8).fill(2) };
  const meta = {
    version: 1,
    datatype: "int16",
    sclSlope: 2,
    sclInter: 0,
    scaled: true,
    qformCode: 1,
    sformCode: 1,
    affineSource: "sform",
  } as const;
  await writeNifti(join(dir, "scaled.nii"), { ...scaled, meta });
  t.deepEqual([...(await readNifti(join(dir, "scaled.nii"))).data], new Array(8).fill(2));
  await t.throwsAsync(writeNifti(join(dir, "y.nii"), { ...scaled, meta: { ...meta, datatype: "int17" as never } }), {
    message: /volume\.meta\.datatype/,
  });
  await t.throwsAsync(writeNifti(join(dir, "y.nii"), { ...scaled, meta: { ...meta, sclSlope: NaN } }), {
    message: /volume\.meta\.sclSlope/,
  });
  await t.throwsAsync(writeNifti(join(dir, "y.nii"), { ...scaled, meta: { ...meta, sformCode: 70000 } }), {
    message: /volume\.meta\.sformCode/,
  });
  t.false(existsSync(join(dir, "y.nii")));
});

test("a header's missing spacing is refused, not taken as 1 mm; a singular sform gives way to the qform (an attacker's review)", async (t) => {
  // a 4×5×3 volume as bhsd writes it (sform and qform both set), then its header bytes edited
  const path = join(tmp, "geom.nii");
  await writeNifti(path, {
    data: Uint8Array.from({ length: 60 }, (_, i) => i),
    dims: [4, 5, 3],
    spacing: [0.5, 0.5, 5],
    affine: [-0.5, 0, 0, 10, 0, 0.5, 0, -20, 0, 0, 5, 30, 0, 0, 0, 1],
  });
  const base = readFileSync(path);
  const edit = (name: string, f: (b: Buffer) => void) => {
    const b = Buffer.from(base);
    f(b);
    const p = join(tmp, name);
    writeFileSync(p, b);
    return p;
  };
  // pixdim[1] NaN or 0 along an axis of 4 voxels: before, 1 mm (every mL off by the true spacing)
  for (const v of [NaN, 0])
    await t.throwsAsync(readNifti(edit(`pixdim-${v}.nii`, (b) => b.writeFloatLE(v, 80))), {
      message: new RegExp(`pixdim\\[1\\] is ${v} along an axis of 4 voxels; a voxel spacing is needed`),
    });
  // a negative pixdim under a qform (sform_code 0): nifti1_io builds the qform as if it were 1
  await t.throwsAsync(
    readNifti(
      edit("pixdim-neg.nii", (b) => {
        b.writeInt16LE(0, 254);
        b.writeFloatLE(-0.5, 80);
      }),
    ),
    { message: /pixdim \[-0\.5, 0\.5, 5\] has a negative spacing, which the qform cannot hold/ },
  );
  // an all-zero sform (sform_code 1): the same affine as the file read by its qform alone
  const byQform = await readNifti(edit("qform-only.nii", (b) => b.writeInt16LE(0, 254)));
  const zero = await readNifti(edit("sform-zero.nii", (b) => b.fill(0, 280, 328)));
  t.deepEqual(zero.affine, byQform.affine);
  t.is(zero.meta?.affineSource, "qform");
  t.deepEqual(zero.spacing, [0.5, 0.5, 5]);
});
