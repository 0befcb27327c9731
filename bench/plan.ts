/**
 * `bench plan` (by name only: minutes): a model's first window in a fresh process, the plan's
 * timings included, against the same with the plan a previous process made imported through
 * BHSD_CONV_PLAN (what `segment --conv-plan` and importConvPlan give), beside onnxruntime-node's
 * first window (session creation apart) — fresh processes in turn, medians. Load times apart: the
 * model's first run, then its second.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fmt, median } from "./lib.js";

type Run = { total: number; first: number; second: number; planned: number };

function child(which: string, engine: string, plan?: string): Run {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "plan-window.ts"), which, engine], {
    encoding: "utf8",
    env: { ...process.env, BHSD_CONV_PLAN: plan ?? "" },
    timeout: 600_000,
  });
  const line = r.stdout.trim().split("\n").pop() ?? "";
  if (r.status !== 0 || !line.startsWith("{")) throw new Error(`bench plan: ${which} ${engine} failed: ${r.stderr.slice(-500)}`);
  if (/BHSD_CONV_PLAN/.test(r.stderr)) throw new Error(`bench plan: ${which} ${engine}: ${r.stderr.slice(-500)}`);
  return JSON.parse(line) as Run;
}

export async function benchPlan(dir: string): Promise<string[]> {
  const rows = [
    "a model's first 16×256×256 window in a fresh process (fp32, random weights; medians of 2 processes each, in turn)",
    "| model | bhsd, plan timed | bhsd, plan imported (BHSD_CONV_PLAN) | bhsd, second window | onnxruntime first / second window |",
    "| --- | --- | --- | --- | --- |",
  ];
  for (const [which, name] of [
    ["resenc", "nnU-Net ResEnc-M (bench/networks.ts)"],
    ["plain", "nnU-Net 3d_fullres-shaped PlainConvUNet (train/unet.ts)"],
  ] as const) {
    const plan = join(dir, `plan-${which}.json`);
    child(which, "native", plan); // makes the plan (written at its exit)
    if (!existsSync(plan)) throw new Error(`bench plan: ${which}: the first process wrote no plan to ${plan}`);
    const fresh: Run[] = [],
      imported: Run[] = [],
      onnx: Run[] = [];
    for (let i = 0; i < 2; i++) {
      fresh.push(child(which, "native"));
      imported.push(child(which, "native", plan));
      if (!imported.at(-1)!.planned) throw new Error(`bench plan: ${which}: the plan in ${plan} was not imported`);
      onnx.push(child(which, "ort"));
    }
    const ms = (rs: Run[], k: keyof Run) => median(rs.map((r) => r[k]));
    rows.push(
      `| ${name} | ${fmt(ms(fresh, "first"))} ms | ${fmt(ms(imported, "first"))} ms | ${fmt(median([...fresh, ...imported].map((r) => r.second)))} ms | ${fmt(ms(onnx, "first"))} / ${fmt(ms(onnx, "second"))} ms |`,
    );
  }
  return rows;
}
