/** Shared test helpers: where the outside references are, and which backends to run each case on. */
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { getBackend, setBackend } from "../lib/backends/index.js";
import type { Backend } from "../lib/backends/types.js";
import { readNifti } from "../lib/io/nifti.js";
import type { BackendName, Volume } from "../lib/types.js";

import { ROOT } from "./paths.js";
export { ROOT, FIXTURES, NIFTI_FIXTURES, sharedFixture } from "./paths.js";

/** `bhsd ARGS…` from the sources (tsx), run to its end: its status, stdout and stderr as text. */
export function bhsdSync(args: readonly string[], timeoutMs: number): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "lib", "cli", "main.ts"), ...args], {
    encoding: "utf8",
    cwd: ROOT,
    timeout: timeoutMs,
  });
}

/**
 * The backends every case runs on: ts always, native unless BHSD_TEST_BACKENDS says otherwise
 * (a native build that fails to load is a test failure, not a skip), cuda when it is available.
 */
export function backendsUnderTest(): { name: BackendName; backend: () => Backend }[] {
  const wanted = (process.env.BHSD_TEST_BACKENDS ?? "ts,native,cuda?")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const out: { name: BackendName; backend: () => Backend }[] = [];
  for (const w of wanted) {
    const optional = w.endsWith("?");
    const name = (optional ? w.slice(0, -1) : w) as BackendName;
    if (optional) {
      try {
        getBackend(name);
      } catch {
        continue;
      }
    }
    out.push({ name, backend: () => getBackend(name) });
  }
  return out;
}

/** The tolerances README states for bf16 ("CPU precision"): of the output's scale, and the share of voxels whose argmax class agrees. */
export const BF16_SCALE = 3e-2;
export const BF16_ARGMAX = 0.99;

/** Whether the native backend loads here (and, if so, makes it the active one). */
export function nativeLoads(): boolean {
  try {
    setBackend("native");
    return true;
  } catch {
    return false;
  }
}

/**
 * The stored data.pkl of a fixture checkpoint: where its bytes lie and how to fix its CRC after a
 * change. PyTorch's writer puts sizes and CRC in data descriptors (local header fields are 0), so
 * they are read from the central directory, whose first entry is data.pkl.
 */
export function pickleSpan(b: Buffer) {
  const name = "checkpoint_final/data.pkl";
  const start = 30 + b.readUInt16LE(26) + b.readUInt16LE(28);
  const eocd = b.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  const cd = b.readUInt32LE(eocd + 16);
  if (
    b.toString("latin1", 30, 30 + name.length) !== name ||
    b.toString("latin1", cd + 46, cd + 46 + name.length) !== name ||
    b.readUInt16LE(8) !== 0
  )
    throw new Error("fixture changed: data.pkl is not the first stored entry");
  const size = b.readUInt32LE(cd + 24);
  const fixCrc = () => b.writeUInt32LE(crc32(b.subarray(start, start + size)), cd + 16);
  return { start, size, fixCrc };
}

/**
 * The Primus fixtures' window of the smoke CT (their make.py's crop z 4–20, y 48–80, x 40–72 of
 * test/fixtures/nnunet-folder/cases/PhantomICH_001_0000.nii.gz): one 16×32×32 patch, so one window.
 */
export async function primusWindowCt(): Promise<Volume> {
  const full = await readNifti(join(ROOT, "test", "fixtures", "nnunet-folder", "cases", "PhantomICH_001_0000.nii.gz"));
  const [nx, ny] = full.dims;
  const data = new Int16Array(32 * 32 * 16);
  let i = 0;
  for (let z = 4; z < 20; z++) for (let y = 48; y < 80; y++) for (let x = 40; x < 72; x++) data[i++] = full.data[(z * ny + y) * nx + x]!;
  return { data, dims: [32, 32, 16], spacing: full.spacing, affine: full.affine };
}
