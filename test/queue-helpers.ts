/**
 * Real components for the queue tests: a redis-server from the system's packages on a free
 * loopback port with its own data folder (AOF on, fsync on every write), and `bhsd` processes
 * (workers, batch commands) from the compiled dist/.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./helpers.js";

export const CLI = process.env.BHSD_TEST_CLI ?? join(ROOT, "dist", "cli", "main.js");

/** Why the queue tests cannot run here, or null. */
export const NO_REDIS: string | null = (() => {
  const r = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
  return r.status === 0 ? null : "redis-server is not installed (apt-get install -y redis-server; .ci/run installs it)";
})();

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? res(a.port) : rej(new Error("no port"))));
    });
  });
}

/** A child's output, line by line, with a way to wait for a line. */
export class Proc {
  readonly lines: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: { re: RegExp; res: (m: RegExpMatchArray) => void }[] = [];
  constructor(
    readonly child: ChildProcess,
    readonly label: string,
  ) {
    let buf = "";
    const take = (b: Buffer) => {
      buf += b.toString();
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.lines.push(line);
        this.waiters = this.waiters.filter((w) => {
          const m = line.match(w.re);
          if (m) w.res(m);
          return !m;
        });
      }
    };
    child.stdout?.on("data", take);
    child.stderr?.on("data", take);
    this.exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  }
  get pid(): number {
    return this.child.pid!;
  }
  /** The first line (already seen or to come) matching re; rejects after timeoutMs or when the process ends first. */
  waitLine(re: RegExp, timeoutMs = 120_000): Promise<RegExpMatchArray> {
    for (const l of this.lines) {
      const m = l.match(re);
      if (m) return Promise.resolve(m);
    }
    return new Promise((res, rej) => {
      const timer = setTimeout(
        () => rej(new Error(`${this.label}: no line ${re} within ${timeoutMs} ms; output:\n${this.lines.join("\n")}`)),
        timeoutMs,
      );
      const w = { re, res: (m: RegExpMatchArray) => (clearTimeout(timer), res(m)) };
      this.waiters.push(w);
      void this.exited.then((e) => {
        if (!this.waiters.includes(w)) return;
        clearTimeout(timer);
        rej(new Error(`${this.label} exited (${e.code ?? e.signal}) before a line ${re}; output:\n${this.lines.join("\n")}`));
      });
    });
  }
  count(re: RegExp): number {
    return this.lines.filter((l) => re.test(l)).length;
  }
  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

export class RedisServer {
  readonly dir = mkdtempSync(join(tmpdir(), "bhsd-redis-"));
  proc: Proc | null = null;
  constructor(readonly port: number) {}
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  static async start(): Promise<RedisServer> {
    const r = new RedisServer(await freePort());
    await r.start();
    return r;
  }
  /** (Re)starts on the same port and data folder: what the AOF holds comes back. */
  async start(): Promise<void> {
    const args = [
      "--port",
      String(this.port),
      "--bind",
      "127.0.0.1",
      "--dir",
      this.dir,
      "--appendonly",
      "yes",
      "--appendfsync",
      "always",
      "--save",
      "",
      "--maxmemory-policy",
      "noeviction",
      "--daemonize",
      "no",
      "--protected-mode",
      "yes",
    ];
    this.proc = new Proc(spawn("redis-server", args, { stdio: ["ignore", "pipe", "pipe"] }), `redis-server :${this.port}`);
    await this.proc.waitLine(/Ready to accept connections/, 30_000);
  }
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (!this.proc) return;
    this.proc.kill(signal);
    await this.proc.exited;
    this.proc = null;
  }
  async stop(): Promise<void> {
    await this.kill("SIGTERM");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** `node dist/cli/main.js ARGS` as a long-lived process (a worker). */
export function bhsd(args: string[], label = args[0] ?? "bhsd", env: NodeJS.ProcessEnv = {}): Proc {
  return new Proc(spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } }), label);
}

/** `node dist/cli/main.js ARGS` to the end: exit code and output. */
export async function bhsdRun(args: string[], timeoutMs = 300_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    let stdout = "",
      stderr = "";
    child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.once("error", rej);
    child.once("exit", (code) => res({ code, stdout, stderr }));
  });
}

/**
 * Workers with short stall settings: a killed worker's job comes back within 10 s. The lock (8 s,
 * renewed every 4 s) stays well above the longest event-loop stall of a job here (0.7 s measured
 * for a 256 x 256 x 32 phantom on a loaded machine), so no live job is taken for a stalled one.
 */
export function startWorker(url: string, extra: string[] = [], label = "worker"): Proc {
  return bhsd(["worker", "--redis", url, "--lock-ms", "8000", "--stalled-interval-ms", "1000", ...extra], label);
}
