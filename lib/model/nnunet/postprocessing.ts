/**
 * nnU-Net's post-processing file: what `nnUNetv2_find_best_configuration` chose on the
 * cross-validation (`crossval_results_folds_…/postprocessing.pkl`, and `postprocessing.json` beside
 * it since nnU-Net 2.1), as cleanup's options (`largestOf`).
 *
 * The pickle is `(pp_fns, pp_fn_kwargs)`: a list of functions — nnU-Net writes only
 * `nnunetv2.postprocessing.remove_connected_components.remove_all_but_largest_component_from_segmentation`
 * — and a list of their keyword arguments, `{"labels_or_regions": …}` with a label, a region (a
 * tuple of labels) or a list of either, numpy integers included. Every form means the union of the
 * labels named, whose largest connected component alone is kept. Parsed by parsePickle (./pickle.ts), which
 * runs nothing: any other global refuses the file.
 */
import { basename } from "node:path";
import type { CleanupOptions } from "../../ops/components.js";
import { CheckpointError, commonGlobal, NumpyDType, numpyScalar, pickleBudget, unpickle } from "./checkpoint.js";
import { brief } from "../../is.js";
import { parseJson, readSmallFile } from "../../io/small-file.js";

/** The one function nnU-Net's post-processing names. */
const LARGEST = "remove_all_but_largest_component_from_segmentation";
const LARGEST_GLOBAL = `nnunetv2.postprocessing.remove_connected_components.${LARGEST}`;
const LARGEST_MARK = Object.freeze({ fn: LARGEST });

/** Larger than any post-processing file nnU-Net writes (a few hundred bytes). */
const MAX_BYTES = 1 << 20;
const MAX_STEPS = 64;
/** Labels, regions and lists visited over all steps (nnU-Net's name each label once or twice). */
const MAX_VISITED = 4096;

async function readPostprocessingFile(path: string, where: string): Promise<Buffer> {
  try {
    return await readSmallFile(path, { maxBytes: MAX_BYTES, what: "a post-processing file" });
  } catch (e) {
    throw new Error(`${where}: cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Reads `postprocessing.pkl` or `postprocessing.json` into cleanup's options: `{ largestOf,
 * connectivity: 26 }` (nnU-Net labels with skimage's full connectivity), or null where nnU-Net chose
 * no post-processing. `classes`: the model's label values, each named label must be one of them.
 */
export async function readNnunetPostprocessing(path: string, classes: readonly number[]): Promise<CleanupOptions | null> {
  const where = `nnU-Net post-processing ${basename(path)}`;
  const bytes = await readPostprocessingFile(path, where);
  let fns: unknown[], kwargs: unknown[];
  if (/\.json$/i.test(path)) {
    let j: { postprocessing_fns?: unknown; postprocessing_kwargs?: unknown };
    try {
      j = parseJson(bytes.toString("utf8")) as typeof j;
    } catch (e) {
      throw new Error(`${where}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    if (!Array.isArray(j?.postprocessing_fns) || !Array.isArray(j.postprocessing_kwargs))
      throw new Error(`${where}: expected postprocessing_fns and postprocessing_kwargs lists, as nnU-Net writes`);
    fns = j.postprocessing_fns.map((f) => (f === LARGEST ? LARGEST_MARK : f));
    kwargs = j.postprocessing_kwargs.map((k) => (k && typeof k === "object" && !Array.isArray(k) ? new Map(Object.entries(k)) : k));
  } else {
    const root = unpickle(bytes, where, "nnU-Net's post-processing", "not a readable pickle", (module, name) => {
      const fqn = `${module}.${name}`;
      if (fqn === LARGEST_GLOBAL) return LARGEST_MARK;
      if (fqn === "numpy.dtype") return commonGlobal(fqn, where, pickleBudget(bytes.length, where));
      if (fqn === "numpy.core.multiarray.scalar" || fqn === "numpy._core.multiarray.scalar")
        return (dtype: unknown, b: unknown) => {
          // labels are numpy integers (LabelManager's np.unique): a float or bool is not one
          const v = dtype instanceof NumpyDType && /^[iu][1248]$/.test(dtype.str) ? numpyScalar(dtype, b) : undefined;
          if (v === undefined || !Number.isInteger(v)) throw new CheckpointError(`${where}: a numpy scalar that is not an integer label`);
          return v;
        };
      throw new CheckpointError(
        `${where}: the pickle names the Python global "${fqn}", which nnU-Net's post-processing never holds; the file is refused (nothing in it was run)`,
      );
    });
    if (!Array.isArray(root) || root.length !== 2 || !Array.isArray(root[0]) || !Array.isArray(root[1]))
      throw new Error(`${where}: expected (pp_fns, pp_fn_kwargs), two lists, as nnU-Net pickles them`);
    [fns, kwargs] = root as [unknown[], unknown[]];
  }
  if (fns.length !== kwargs.length) throw new Error(`${where}: ${fns.length} functions but ${kwargs.length} argument sets`);
  if (fns.length > MAX_STEPS) throw new Error(`${where}: ${fns.length} steps, more than ${MAX_STEPS}`);
  const known = new Set(classes.filter((c) => c > 0));
  let visited = 0;
  const largestOf = fns.map((f, i) => {
    if (f !== LARGEST_MARK)
      throw new Error(
        `${where}: step ${i + 1} is ${typeof f === "string" ? f : "a function"}, not ${LARGEST} (the only one nnU-Net writes)`,
      );
    const k = kwargs[i];
    if (!(k instanceof Map) || k.size !== 1 || !k.has("labels_or_regions"))
      throw new Error(`${where}: step ${i + 1}'s arguments must be { labels_or_regions } alone`);
    const labels = new Set<number>();
    // (a pickle's memo can name one list many times over: the values visited are counted, so a
    // small file cannot ask for N² steps)
    const take = (v: unknown, depth: number): void => {
      if (++visited > MAX_VISITED) throw new Error(`${where}: more than ${MAX_VISITED} labels and regions named in all`);
      if (Array.isArray(v) && depth < 2) for (const x of v) take(x, depth + 1);
      else if (Number.isInteger(v) && known.has(v as number)) labels.add(v as number);
      else
        throw new Error(
          `${where}: step ${i + 1} names ${brief(v)}, not a label of the model (${[...known].join(", ")}) or a list or region of them`,
        );
    };
    take(k.get("labels_or_regions"), 0);
    if (labels.size === 0) throw new Error(`${where}: step ${i + 1} names no label`);
    return [...labels];
  });
  return largestOf.length ? { largestOf, connectivity: 26 } : null;
}

/**
 * nnU-Net v1's `postprocessing.json` (consolidate_folds / determine_postprocessing, in the trainer
 * folder, which v1's predictor applies): `for_which_classes`, each a label or a list of labels whose
 * union keeps its largest connected components (all of that size) alone, labelled with scipy's
 * default structure, the 6-neighbourhood; `min_valid_object_sizes` "None" (the default). The
 * advanced form, which keeps components above a size, is refused by name.
 */
export async function readNnunetV1Postprocessing(path: string, classes: readonly number[]): Promise<CleanupOptions | null> {
  const where = `nnU-Net v1 post-processing ${basename(path)}`;
  const bytes = await readPostprocessingFile(path, where);
  let j: { for_which_classes?: unknown; min_valid_object_sizes?: unknown };
  try {
    j = parseJson(bytes.toString("utf8")) as typeof j;
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  const steps = j?.for_which_classes;
  if (!Array.isArray(steps)) throw new Error(`${where}: expected a for_which_classes list, as nnU-Net v1 writes`);
  if (steps.length > MAX_STEPS) throw new Error(`${where}: ${steps.length} steps, more than ${MAX_STEPS}`);
  const mv = j.min_valid_object_sizes;
  if (mv !== undefined && mv !== null && mv !== "None" && !(typeof mv === "string" && /^\s*\{\s*\}\s*$/.test(mv) && steps.length === 0))
    throw new Error(
      `${where}: min_valid_object_sizes ${brief(mv)} (the advanced post-processing, which keeps components above a size) is not built`,
    );
  const known = new Set(classes.filter((c) => c > 0));
  const largestOf = steps.map((c, i) => {
    const labels = Array.isArray(c) ? c : [c];
    if (!labels.length || labels.length > 255 || !labels.every((v) => Number.isInteger(v) && known.has(v as number)))
      throw new Error(
        `${where}: for_which_classes[${i}] is ${brief(c)}, not a label of the model (${[...known].join(", ")}) or a list of them`,
      );
    return [...new Set(labels as number[])];
  });
  return largestOf.length ? { largestOf, connectivity: 6 } : null;
}
