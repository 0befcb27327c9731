/**
 * Where the package's files are, from the compiled (dist/) or the source (lib/) tree alike. At the
 * root of lib/ so that backends, server, queue and cli all import it downward.
 */
import { existsSync } from "node:fs";
import { realpath } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import { fileURLToPath } from "node:url";

/** The package root: the nearest folder above this module holding package.json and binding.gyp. */
export const PACKAGE_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "binding.gyp"))) return dir;
    dir = dirname(dir);
  }
  return join(dirname(fileURLToPath(import.meta.url)), "..");
})();

/**
 * Whether `path` resolves (links followed) to a place outside `folder` (resolved too): a model
 * folder's file that is a link elsewhere. A path that does not exist does not (its reader says so).
 */
export async function leadsOutOf(folder: string, path: string): Promise<boolean> {
  const [root, real] = await Promise.all([realpath(folder), realpath(path).catch(() => null)]);
  return real !== null && real !== root && !real.startsWith(root.endsWith(sep) ? root : root + sep);
}
