/**
 * README's TypeScript snippets type-check against the package's own types, as a user's editor
 * would check them after `import … from "bhsd"`: a renamed option, a return type the snippet misuses
 * or a name it forgot to import fails here (a reviewer found `await using model` and an ensemble's
 * `cleanup: await readNnunetPostprocessing(…)` rejected by tsc, and `readNifti` used unimported).
 * The values a snippet takes from its context (`ct`, `gt`, `input`, …) are declared with the types
 * a user would hold; any other unknown name is an error.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";
import { ROOT } from "./paths.js";

/** What a snippet may use without declaring it: a value of the user's program before it. */
const CONTEXT: Record<string, string> = {
  data: "Float32Array",
  ct: 'import("bhsd").Volume',
  gt: 'import("bhsd").Volume',
  pred: 'import("bhsd").Volume',
  input: 'import("bhsd").Tensor',
  seriesUid: "string",
  onProgress: "(p: unknown) => void",
  path: "string",
};

function snippets(): { line: number; code: string }[] {
  const lines = readFileSync(join(ROOT, "README.md"), "utf8").split("\n");
  const out: { line: number; code: string }[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== "```ts") continue;
    const start = i + 1;
    let j = start;
    while (j < lines.length && lines[j]!.trim() !== "```") j++;
    out.push({ line: start + 1, code: lines.slice(start, j).join("\n") });
    i = j;
  }
  return out;
}

test("README's TypeScript snippets type-check against the package's types", (t) => {
  t.timeout(180_000);
  const found = snippets();
  t.true(found.length >= 7, `${found.length} snippets`);
  const files = new Map<string, string>();
  found.forEach(({ line, code }) => {
    const declared = (name: string) => new RegExp(`\\b(const|let|var)\\s+(\\{[^}]*\\b${name}\\b[^}]*\\}|${name}\\b)`).test(code);
    const context = Object.entries(CONTEXT)
      .filter(([name]) => !declared(name) && new RegExp(`\\b${name}\\b`).test(code))
      .map(([name, type]) => `declare const ${name}: ${type};`)
      .join(" ");
    // one line of context first: the snippet's own lines keep README's numbering minus one
    files.set(join(ROOT, `readme-snippet-${line}.mts`), `${context}\n${code}\nexport {};\n`);
  });
  // and two of its prose's forms: a model freed by `await using`, an ensemble's post-processing
  const prose = join(ROOT, "readme-snippet-0.mts");
  files.set(
    prose,
    `import { loadModel, loadNnunet, readNnunetPostprocessing, segment, type Volume } from "bhsd";
declare const ct: Volume, a: string, b: string, path: string;
{
  await using model = await loadModel("model.onnx");
  await using nn = await loadNnunet("folder");
  await segment(ct, model);
  await segment(ct, nn);
}
await segment(ct, [await loadModel(a), await loadModel(b)], { cleanup: (await readNnunetPostprocessing(path, [0, 1, 2, 3, 4, 5])) ?? false });
`,
  );
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ["lib.es2022.d.ts"],
    types: ["node"],
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    esModuleInterop: true,
    baseUrl: ROOT,
    paths: { bhsd: ["lib/index.ts"] },
    allowImportingTsExtensions: true,
  };
  const host = ts.createCompilerHost(options);
  const readFile = host.readFile.bind(host),
    fileExists = host.fileExists.bind(host),
    getSourceFile = host.getSourceFile.bind(host);
  host.readFile = (f) => files.get(f) ?? readFile(f);
  host.fileExists = (f) => files.has(f) || fileExists(f);
  host.getSourceFile = (f, v, ...rest) => (files.has(f) ? ts.createSourceFile(f, files.get(f)!, v) : getSourceFile(f, v, ...rest));
  const program = ts.createProgram([...files.keys()], options, host);
  const problems = ts
    .getPreEmitDiagnostics(program)
    .filter((d) => d.file && files.has(d.file.fileName))
    .map((d) => {
      const at = Number(/readme-snippet-(\d+)/.exec(d.file!.fileName)![1]);
      const { line } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0);
      const where = at === 0 ? `the README's prose forms, line ${line + 1}` : `README.md:${at + line - 1}`;
      return `${where}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
    });
  t.deepEqual(problems, []);
});
