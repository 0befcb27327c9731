/**
 * Connected components: 26- and 6-connectivity on a 40×512×512 mask of smooth blobs (10 %
 * foreground, like a CT's bleed masks but more of them) and on 256³ uniform noise at 35 %, through
 * the public call as users make it (a new labels array each call), beside scipy.ndimage.label and
 * cc3d (seung-lab/connected-components-3d, its header-only C++ core compiled here by
 * bench/ccl_cc3d.cc) on the same bytes in the same run. The three are interleaved: each round times
 * bhsd, then scipy and cc3d in their own processes, in a rotating order, and the medians are over all
 * rounds, so that the load of this shared machine falls on all of them alike. The load average
 * before and after is printed with the table.
 *
 * bhsd is timed twice: calls back to back, each new labels array fresh memory while V8 has not yet
 * collected the earlier ones (first touch of fresh pages is slow in these VMs: 67 MB of labels cost
 * 0.2 s there), and calls after a gc() (outside the timing) has returned the earlier labels' memory
 * to the engine, which hands it out again zero-filled — what a long-running program sees.
 */
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { connectedComponents, setBackend, backendInfo, volumeFromArray, writeNpy } from "../dist/index.js";
import { paintEllipsoid } from "../dist/phantom/ellipsoid.js";
import { fmt, measure, median, pythonWith, rng, runPython } from "./lib.js";

export function blobMask(nx: number, ny: number, nz: number, blobs: number, seed: number): Uint8Array {
  const m = new Uint8Array(nx * ny * nz);
  const r = rng(seed);
  for (let b = 0; b < blobs; b++) {
    const cx = r() * nx,
      cy = r() * ny,
      cz = r() * nz;
    const ax = 3 + r() * 40,
      ay = 3 + r() * 40,
      az = 0.5 + r() * 4;
    paintEllipsoid(m, [nx, ny, nz], [cx, cy, cz], [ax, ay, az], 1);
  }
  return m;
}

export function noiseMask(n: number, density: number, seed: number): Uint8Array {
  const r = rng(seed);
  return new Uint8Array(n).map(() => (r() < density ? 1 : 0));
}

const SCIPY = `
import json, sys, time, numpy as np
from scipy import ndimage
reps = int(sys.argv[1])
out = {}
for path, conn in zip(sys.argv[2::2], sys.argv[3::2]):
    a = np.load(path)
    s = ndimage.generate_binary_structure(3, {"6": 1, "18": 2, "26": 3}[conn])
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); lab, n = ndimage.label(a, s); ts.append((time.perf_counter() - t0) * 1000)
        del lab
    out[path + ":" + conn] = {"ms": ts, "count": int(n)}
print(json.dumps(out))`;

/** Where cc3d's sources are: CC3D_DIR (a checkout, or a bare git mirror), else the session's mirror. */
const CC3D_DIR = process.env.CC3D_DIR ?? "/work/.mirror/seung-lab+connected-components-3d/repo";

/** Compiles bench/ccl_cc3d.cc against cc3d.hpp into `dir`; the executable, or why not. */
function buildCc3d(dir: string): { exe: string } | { why: string } {
  let hpp = join(CC3D_DIR, "cc3d", "cc3d.hpp");
  if (!existsSync(hpp)) {
    // a bare mirror (what the fetch tool leaves): the header from its newest commit
    const show = spawnSync("git", [`--git-dir=${CC3D_DIR}`, "show", "HEAD:cc3d/cc3d.hpp"], { encoding: "utf8", maxBuffer: 1 << 24 });
    if (show.status !== 0)
      return { why: `no cc3d sources at ${CC3D_DIR} (set CC3D_DIR to a checkout of seung-lab/connected-components-3d)` };
    hpp = join(dir, "cc3d.hpp");
    writeFileSync(hpp, show.stdout);
  }
  const src = join(dirname(fileURLToPath(import.meta.url)), "ccl_cc3d.cc");
  const exe = join(dir, "ccl_cc3d");
  // the addon's own flags (binding.gyp): -O3, no -march
  const cc = spawnSync("g++", ["-std=c++17", "-O3", "-w", "-include", hpp, src, "-o", exe], { encoding: "utf8" });
  if (cc.status !== 0)
    return { why: `g++ could not build bench/ccl_cc3d.cc: ${(cc.stderr ?? String(cc.error)).trim().split("\n").slice(-2).join(" | ")}` };
  return { exe };
}

type Samples = Record<string, { ms: number[]; count: number }>;

export async function benchComponents(dir: string): Promise<string[]> {
  const cases = [
    // 200 blobs: 9.5 % of the voxels (the 60 of earlier runs gave 2.6 %)
    { name: "blobs 40×512×512 (9.5 %)", file: "blobs", shape: [40, 512, 512], data: blobMask(512, 512, 40, 200, 11) },
    { name: "noise 256³ (35 %)", file: "noise", shape: [256, 256, 256], data: noiseMask(256 ** 3, 0.35, 12) },
  ];
  const conns = [26, 6] as const;
  const rounds = Number(process.env.BENCH_ROUNDS ?? 5),
    perRound = 3;
  const lines: string[] = [];
  const load0 = loadavg();

  // the same bytes for the three: .npy for scipy, raw for cc3d
  const scipyArgs: string[] = [],
    cc3dArgs: string[] = [];
  for (const c of cases) {
    const npy = join(dir, `${c.file}.npy`),
      raw = join(dir, `${c.file}.u8`);
    await writeNpy(npy, c.data, c.shape);
    writeFileSync(raw, c.data);
    const [nz, ny, nx] = c.shape as [number, number, number];
    for (const conn of conns) {
      scipyArgs.push(npy, String(conn));
      cc3dArgs.push(raw, String(nx), String(ny), String(nz), String(conn));
    }
  }
  const py = pythonWith("numpy", "scipy");
  const cc3d = buildCc3d(dir);
  const key = (c: (typeof cases)[number], conn: number, who: "scipy" | "cc3d") =>
    `${join(dir, `${c.file}.${who === "scipy" ? "npy" : "u8"}`)}:${conn}`;

  const { active, available } = backendInfo();
  const hasNative = available.native;
  const bhsd: Record<string, { ms: number[]; count: number }> = {},
    bhsdGc: Record<string, { ms: number[] }> = {};
  const gc = (globalThis as { gc?: () => void }).gc;
  const scipy: Samples = {},
    cc: Samples = {};
  const add = (into: Samples, got: Samples) => {
    for (const [k, v] of Object.entries(got)) {
      into[k] ??= { ms: [], count: v.count };
      into[k]!.ms.push(...v.ms);
      if (into[k]!.count !== v.count) throw new Error(`${k}: ${v.count} components in one round, ${into[k]!.count} in another`);
    }
  };
  const runBhsd = async () => {
    if (!hasNative) return;
    setBackend("native");
    for (const c of cases) {
      const vol = volumeFromArray(c.data, c.shape);
      for (const conn of conns) {
        const k = `${c.file}:${conn}`;
        bhsd[k] ??= { ms: [], count: -1 };
        for (let i = 0; i < perRound; i++) {
          const t0 = performance.now();
          const { count } = await connectedComponents(vol, { connectivity: conn });
          bhsd[k]!.ms.push(performance.now() - t0);
          bhsd[k]!.count = count;
        }
        if (!gc) continue;
        bhsdGc[k] ??= { ms: [] };
        for (let i = 0; i < perRound; i++) {
          gc();
          await new Promise((r) => setTimeout(r, 20)); // freed ArrayBuffers are released after the GC
          const t0 = performance.now();
          await connectedComponents(vol, { connectivity: conn });
          bhsdGc[k]!.ms.push(performance.now() - t0);
        }
      }
    }
  };
  const runScipy = () => py && add(scipy, runPython<Samples>(py, SCIPY, [String(perRound), ...scipyArgs]));
  const runCc3d = () => {
    if (!("exe" in cc3d)) return;
    const r = spawnSync(cc3d.exe, [String(perRound), ...cc3dArgs], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`ccl_cc3d failed: ${r.stderr}`);
    add(cc, JSON.parse(r.stdout.trim()) as Samples);
  };
  // one warm-up of each, then the rounds in a rotating order
  await runBhsd();
  for (const k of Object.keys(bhsd)) bhsd[k]!.ms = [];
  for (const k of Object.keys(bhsdGc)) bhsdGc[k]!.ms = [];
  const order = [runBhsd, runScipy, runCc3d];
  for (let r = 0; r < rounds; r++) {
    for (let j = 0; j < order.length; j++) await order[(r + j) % order.length]!();
  }
  const load1 = loadavg();

  lines.push(
    `connected components, public call (fresh labels each call), medians of ${rounds}×${perRound} interleaved runs; ` +
      `load average ${load0.map((l) => l.toFixed(1)).join(" / ")} before, ${load1.map((l) => l.toFixed(1)).join(" / ")} after (1 / 5 / 15 min)`,
  );
  lines.push(
    "| input | conn | bhsd native ms: back to back / after gc | MVx/s | peak MB | scipy ms | × scipy | cc3d ms | × cc3d | bhsd ts ms |",
  );
  lines.push("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const c of cases) {
    const vol = volumeFromArray(c.data, c.shape);
    for (const conn of conns) {
      const b = bhsd[`${c.file}:${conn}`],
        bg = bhsdGc[`${c.file}:${conn}`];
      const msGc = bg?.ms.length ? median(bg.ms) : NaN;
      const s = scipy[key(c, conn, "scipy")],
        k = cc[key(c, conn, "cc3d")];
      const ms = b ? median(b.ms) : NaN;
      for (const [who, ref] of [
        ["scipy", s],
        ["cc3d", k],
      ] as const) {
        if (b && ref && ref.count !== b.count) throw new Error(`${c.name} ${conn}: bhsd ${b.count} components, ${who} ${ref.count}`);
      }
      let peak = NaN;
      if (hasNative) {
        setBackend("native");
        peak = (await measure(() => connectedComponents(vol, { connectivity: conn }), 1)).peakMb;
      }
      let tsMs = NaN;
      if (backendInfo().available.ts && process.env.BENCH_COMPONENTS_TS !== "0") {
        setBackend("ts");
        tsMs = (await measure(() => connectedComponents(vol, { connectivity: conn }), 1)).ms;
      }
      const sm = s ? median(s.ms) : NaN,
        km = k ? median(k.ms) : NaN;
      lines.push(
        `| ${c.name} | ${conn} | ${fmt(ms)} / ${fmt(msGc)} | ${fmt(c.data.length / 1e3 / ms, 0)} / ${fmt(c.data.length / 1e3 / msGc, 0)} | ${fmt(peak, 0)} | ${fmt(sm)} | ${fmt(sm / ms, 1)} / ${fmt(sm / msGc, 1)} | ${fmt(km)} | ${fmt(km / ms, 1)} / ${fmt(km / msGc, 1)} | ${fmt(tsMs)} |`,
      );
    }
  }
  if (!hasNative) lines.push("(the native addon is not built: no bhsd native figures)");
  if (!py) lines.push("(python3 with numpy and scipy not found: no scipy reference in this run)");
  if ("why" in cc3d) lines.push(`(cc3d skipped: ${cc3d.why})`);
  setBackend(active);
  return lines;
}
