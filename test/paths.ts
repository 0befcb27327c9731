/** Where the outside references are (no library imports: the bench uses it beside the compiled package). */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gunzipSync } from "node:zlib";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/**
 * The outside reference fixtures (PyTorch, scipy), copied verbatim into the repository from the
 * project's shared/fixtures (see test/fixtures/shared/README.md): the suite needs nothing beside it.
 */
export const FIXTURES = join(ROOT, "test", "fixtures", "shared");
export const NIFTI_FIXTURES = join(ROOT, "test", "fixtures", "nifti");

let sums: Map<string, string> | undefined;
/** SHA256SUMS: the sha256 of each original (uncompressed) file, by path relative to FIXTURES. */
function expectedSums(): Map<string, string> {
  if (!sums) {
    sums = new Map();
    for (const line of readFileSync(join(FIXTURES, "SHA256SUMS"), "utf8").split("\n")) {
      const m = /^([0-9a-f]{64})\s+\*?(\S.*)$/.exec(line.trim());
      if (m) sums.set(m[2]!, m[1]!);
    }
  }
  return sums;
}

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const checked = new Map<string, string>();

/**
 * The path of an outside fixture, e.g. sharedFixture("voxel", "ccl_blobs_mask.npy"). A file stored
 * gzip-compressed (NAME.gz) is inflated once into a cache under the OS temp folder (named by its
 * hash, written atomically, so concurrent test processes agree). Every file is checked against
 * SHA256SUMS before its path is handed out, so a damaged copy fails loudly instead of silently
 * changing a reference.
 */
export function sharedFixture(...parts: string[]): string {
  const rel = parts.join("/");
  const hit = checked.get(rel);
  if (hit) return hit;
  const want = expectedSums().get(rel);
  if (!want)
    throw new Error(
      `sharedFixture: ${rel} is not listed in ${join(FIXTURES, "SHA256SUMS")} (copy it from shared/fixtures and add its sha256)`,
    );
  const plain = join(FIXTURES, ...parts);
  let path: string;
  let bytes: Uint8Array;
  if (existsSync(plain)) {
    path = plain;
    bytes = readFileSync(plain);
  } else if (existsSync(`${plain}.gz`)) {
    path = join(tmpdir(), "bhsd-test-fixtures", want, parts[parts.length - 1]!);
    const cached = existsSync(path) ? readFileSync(path) : null;
    if (cached && sha256(cached) === want) bytes = cached;
    else {
      // not inflated yet, or a damaged cache: inflate the repository's copy (checked below)
      bytes = gunzipSync(readFileSync(`${plain}.gz`));
      mkdirSync(dirname(path), { recursive: true });
      const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
      writeFileSync(tmp, bytes);
      try {
        renameSync(tmp, path);
      } catch (e) {
        // another test process put the same file there first (where rename does not replace)
        if (!existsSync(path)) throw e;
        rmSync(tmp, { force: true });
      }
    }
  } else throw new Error(`sharedFixture: missing ${plain} (or ${plain}.gz)`);
  const got = sha256(bytes);
  if (got !== want) throw new Error(`sharedFixture: ${path} has sha256 ${got}, expected ${want} (SHA256SUMS)`);
  checked.set(rel, path);
  return path;
}

/**
 * A fixture folder with a SHA256SUMS of its own (`<sha256>  <relative path>` lines): `file(rel)`
 * is the path, checked against its recorded sha256 (a damaged copy fails loudly); `listed` the
 * relative paths it names.
 */
export function checkedFolder(dir: string): { file: (rel: string) => string; bytes: (rel: string) => Uint8Array; listed: string[] } {
  const recorded = new Map<string, string>();
  for (const line of readFileSync(join(dir, "SHA256SUMS"), "utf8").split("\n")) {
    const m = /^([0-9a-f]{64})\s+\*?(\S.*)$/.exec(line.trim());
    if (m) recorded.set(m[2]!, m[1]!);
  }
  const read = (rel: string) => {
    const path = join(dir, rel);
    const bytes = readFileSync(path);
    const got = sha256(bytes);
    if (got !== recorded.get(rel)) throw new Error(`${path} has sha256 ${got}, SHA256SUMS says ${recorded.get(rel)}`);
    return { path, bytes };
  };
  return {
    listed: [...recorded.keys()],
    file: (rel) => read(rel).path,
    // (the bytes checked are the bytes returned)
    bytes: (rel) => new Uint8Array(read(rel).bytes),
  };
}

let networkSums: Record<string, string> | undefined;
/** A file of test/fixtures/networks (the real networks' exports, inputs and PyTorch outputs), checked against its manifest. */
export function networkFixture(file: string): string {
  const dir = join(ROOT, "test", "fixtures", "networks");
  networkSums ??= (JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as { sha256: Record<string, string> }).sha256;
  const path = join(dir, file);
  if (sha256(readFileSync(path)) !== networkSums[file]) throw new Error(`${path} differs from test/fixtures/networks/manifest.json`);
  return path;
}
