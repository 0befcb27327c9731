/** Shared test helpers: where the outside references are, and which backends to run each case on. */
import { getBackend } from "../lib/backends/index.js";
import type { Backend } from "../lib/backends/types.js";
import type { BackendName } from "../lib/types.js";

export { ROOT, FIXTURES, NIFTI_FIXTURES, sharedFixture } from "./paths.js";

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
