/** Where the outside references are (no library imports: the bench uses it beside the compiled package). */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/** ../shared beside the project (read in place, never copied). */
export const SHARED = process.env.BHSD_SHARED ?? join(ROOT, "..", "shared");
export const FIXTURES = join(SHARED, "fixtures");
export const NIFTI_FIXTURES = join(ROOT, "test", "fixtures", "nifti");

export function sharedFixture(...parts: string[]): string {
  const p = join(FIXTURES, ...parts);
  if (!existsSync(p)) throw new Error(`missing outside fixture ${p} (is ../shared beside the project?)`);
  return p;
}
