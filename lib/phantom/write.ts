/**
 * Writes phantoms in BHSD's layout: images/, "ground truths"/, and slice-level CSVs (RSNA form);
 * with `dicom`, each CT also as a DICOM CT series folder dicom/<case>/ (one file per slice).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { writeDicomSeries } from "../io/dicom-write.js";
import { writeNifti } from "../io/nifti.js";
import { layoutFolders } from "../metrics/dataset.js";
import { slicePresence, slicesToCsv } from "../metrics/slices.js";
import { makePhantom, type PhantomOptions } from "./phantom.js";

export interface PhantomSetOptions extends PhantomOptions {
  out: string;
  cases: number;
  seed: number;
  /** Also write each CT as a DICOM series folder, dicom/<case>/ (see writeDicomSeries). */
  dicom?: boolean;
  onCase?: (done: number, total: number, name: string) => void;
}

export interface PhantomCase {
  name: string;
  classes: number[];
  /** The DICOM series folder, relative to `out` (with `dicom`). */
  dicom?: string;
}

export async function writePhantoms(o: PhantomSetOptions): Promise<{ cases: PhantomCase[] }> {
  const { images, truths, slices } = layoutFolders(o.out);
  for (const d of [images, truths, slices]) await mkdir(d, { recursive: true });
  const cases: PhantomCase[] = [];
  for (let k = 0; k < o.cases; k++) {
    const name = `phantom_${String(o.seed).padStart(4, "0")}_${String(k).padStart(3, "0")}`;
    const p = makePhantom(o.seed * 100003 + k, o);
    await writeNifti(join(images, `${name}.nii.gz`), p.ct);
    await writeNifti(join(truths, `${name}.nii.gz`), p.labels);
    await writeFile(join(slices, `${name}.csv`), slicesToCsv(slicePresence(p.labels)));
    const c: PhantomCase = { name, classes: p.classes };
    if (o.dicom) {
      c.dicom = `dicom/${name}`;
      await writeDicomSeries(join(o.out, "dicom", name), p.ct, { seriesDescription: `bhsd phantom ${name}`.slice(0, 64) });
    }
    cases.push(c);
    o.onCase?.(k + 1, o.cases, name);
  }
  await writeFile(join(o.out, "cases.json"), JSON.stringify({ seed: o.seed, cases }, null, 1) + "\n");
  return { cases };
}
