/** Shared test helpers: where the outside references are, and which backends to run each case on. */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { getBackend } from "../lib/backends/index.js";
import type { Backend } from "../lib/backends/types.js";
import type { BackendName } from "../lib/types.js";

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

/**
 * The backends every case runs on: ts always, native unless BHSD_TEST_BACKENDS says otherwise
 * (a native build that fails to load is a test failure, not a skip), cuda when it is available.
 */
export function backendsUnderTest(): { name: BackendName; backend: () => Backend }[] {
  const wanted = (process.env.BHSD_TEST_BACKENDS ?? "ts,native,cuda?").split(",").map((s) => s.trim()).filter(Boolean);
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
