/**
 * The models of a model folder, by name, as the REST service, the workers and batches find them:
 * `<name>.onnx` (with its sidecar), or a folder `<name>/` that is an nnU-Net trainer folder
 * (`plans.json` or `plans.pkl`) or a MONAI bundle (`configs/inference.json` / `.yaml`). Where a
 * name is both, the .onnx file is the model.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { loadModel } from "./model.js";
import { CONFIG_NAMES } from "./monai/bundle.js";
import { loadMonai } from "./monai/index.js";
import { loadNnunet } from "./nnunet/index.js";
import type { SegmentModel } from "./segment.js";

export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export type NamedModelKind = "onnx" | "nnunet" | "monai";

export interface NamedModel {
  name: string;
  kind: NamedModelKind;
  /** The .onnx file or the folder. */
  path: string;
}

/** A loaded model of any kind: what segment() runs, what a cache counts and disposes. */
export type LoadedModel = SegmentModel & { readonly weightBytes: number; dispose(): void };

/** What kind of model folder `path` is, or null. */
export function folderKind(path: string): NamedModelKind | null {
  if (existsSync(join(path, "plans.json")) || existsSync(join(path, "plans.pkl"))) return "nnunet";
  if (CONFIG_NAMES.some((n) => existsSync(join(path, "configs", n)))) return "monai";
  return null;
}

/** The folder's models, by name (sorted). */
export function listNamedModels(dir: string): NamedModel[] {
  if (!existsSync(dir)) return [];
  const out = new Map<string, NamedModel>();
  for (const f of readdirSync(dir).sort()) {
    const p = join(dir, f);
    if (f.endsWith(".onnx")) {
      const name = f.slice(0, -5);
      if (MODEL_NAME.test(name)) out.set(name, { name, kind: "onnx", path: p });
      continue;
    }
    if (!MODEL_NAME.test(f) || out.has(f) || existsSync(join(dir, `${f}.onnx`))) continue;
    let isDir: boolean;
    try {
      isDir = statSync(p).isDirectory();
    } catch {
      continue;
    }
    const kind = isDir ? folderKind(p) : null;
    if (kind) out.set(f, { name: f, kind, path: p });
  }
  return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** The model `name` of the folder, or undefined (a name that is not plain never matches); only its own entries are looked at. */
export function findNamedModel(dir: string, name: string): NamedModel | undefined {
  if (!MODEL_NAME.test(name) || name.includes("..")) return undefined;
  const onnx = join(dir, `${name}.onnx`);
  if (existsSync(onnx)) return { name, kind: "onnx", path: onnx };
  const p = join(dir, name);
  let isDir: boolean;
  try {
    isDir = statSync(p).isDirectory();
  } catch {
    return undefined;
  }
  const kind = isDir ? folderKind(p) : null;
  return kind ? { name, kind, path: p } : undefined;
}

/** Loads the model at `path`: an .onnx file, an nnU-Net trainer folder or a MONAI bundle. */
export async function loadModelAt(path: string): Promise<LoadedModel> {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    // (the loaders say what is missing)
  }
  if (!isDir) return loadModel(path);
  const kind = folderKind(path);
  if (kind === "nnunet") return loadNnunet(path);
  if (kind === "monai") return loadMonai(path);
  throw new Error(`${path} is a folder that is neither an nnU-Net trainer folder (plans.json) nor a MONAI bundle (configs/inference.json)`);
}
