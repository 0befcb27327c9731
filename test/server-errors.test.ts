// Issue 18 #11, #13: client faults are 4xx in the service's `{ error, message }` shape (fastify's
// own, multipart's and unknown routes included); the OpenAPI document comes from the routes'
// schemas and lists exactly the routes registered; the bearer scheme is case-insensitive; the log
// level is an option and requests are not logged by default; serve() leaves signals alone.
import test from "ava";
import { spawn } from "node:child_process";
import { createServer } from "../lib/index.js";
import { serve } from "../lib/server/server.js";
import { ROOT } from "./paths.js";
import { modelFolder, nifti, octet, start, tempDir, ctNifti } from "./server-helpers.js";

const modelDir = modelFolder();

async function expectError(t: import("ava").ExecutionContext, r: Response, status: number, error: string, message?: RegExp) {
  t.is(r.status, status, `${error}: ${r.status}`);
  t.regex(r.headers.get("content-type") ?? "", /^application\/json/);
  const b = await r.json();
  t.deepEqual(Object.keys(b).sort(), ["error", "message"]);
  t.is(b.error, error);
  t.is(typeof b.message, "string");
  if (message) t.regex(b.message, message);
}

const form = (files: Record<string, Buffer>) => {
  const fd = new FormData();
  for (const [k, v] of Object.entries(files)) fd.append(k, new Blob([v]), `${k}.nii.gz`);
  return fd;
};

test.serial("client faults answer 4xx { error, message }, never 500", async (t) => {
  const s = await start({ modelDir });
  try {
    const post = (path: string, body: BodyInit, headers: Record<string, string> = octet) =>
      fetch(s.url + path, { method: "POST", body, headers });
    const labels = (v: number) => nifti(new Uint8Array(8 * 8 * 4).fill(v), [8, 8, 4], "uint8");
    // a label 6 in evaluate: the labels are 0..5 (BHSD's classes)
    await expectError(
      t,
      await fetch(`${s.url}/v1/evaluate`, { method: "POST", body: form({ gt: labels(6), pred: labels(1) }) }),
      422,
      "bad_labels",
      /gt holds the value 6 at voxel \(0, 0, 0\); labels must be integers 0\.\.5/,
    );
    await expectError(
      t,
      await fetch(`${s.url}/v1/evaluate`, {
        method: "POST",
        body: form({ gt: labels(1), pred: nifti(new Float32Array(256).fill(0.5), [8, 8, 4], "float32") }),
      }),
      422,
      "bad_labels",
      /pred holds the value 0\.5/,
    );
    // multipart without a boundary, truncated, or with fields the route does not take
    await expectError(
      t,
      await post("/v1/evaluate", "--x\r\n", { "content-type": "multipart/form-data" }),
      400,
      "bad_multipart",
      /Boundary not found/,
    );
    const cut =
      '--abc\r\nContent-Disposition: form-data; name="gt"; filename="g.nii.gz"\r\nContent-Type: application/octet-stream\r\n\r\n' +
      "x".repeat(100);
    await expectError(
      t,
      await post("/v1/evaluate", cut, { "content-type": "multipart/form-data; boundary=abc" }),
      400,
      "bad_multipart",
      /unexpected end/i,
    );
    await expectError(
      t,
      await fetch(`${s.url}/v1/evaluate`, { method: "POST", body: form({ gt: labels(1), other: labels(1) }) }),
      400,
      "bad_multipart",
      /unexpected file field "other"/,
    );
    await expectError(
      t,
      await fetch(`${s.url}/v1/evaluate`, { method: "POST", body: form({ gt: labels(1) }) }),
      400,
      "missing_field",
      /"pred" is missing/,
    );
    await expectError(
      t,
      await fetch(`${s.url}/v1/segment`, { method: "POST", body: form({ image: labels(1) }) }),
      400,
      "bad_multipart",
      /"image".*ct/,
    );
    // unknown routes and methods, unsupported media types, malformed JSON
    await expectError(t, await fetch(`${s.url}/v2/nothing`), 404, "not_found", /no route GET "\/v2\/nothing"/);
    await expectError(t, await fetch(`${s.url}/v1/segment`), 404, "not_found");
    await expectError(
      t,
      await post("/v1/segment", "{not json", { "content-type": "application/json" }),
      415,
      "unsupported_media_type",
      /"application\/json"/,
    );
    await expectError(t, await post("/v1/components", "x", { "content-type": "text/plain" }), 415, "unsupported_media_type");
    await expectError(t, await post("/v1/evaluate", labels(1)), 415, "unsupported_media_type", /multipart\/form-data/);
    // query and path parameters, checked by the route schemas
    await expectError(
      t,
      await post("/v1/segment?model=tiny&tta=yes", ctNifti([8, 8, 2])),
      400,
      "bad_query",
      /tta must be boolean, got "yes"/,
    );
    await expectError(
      t,
      await post("/v1/segment?model=tiny&cleanupMinMl=-3", ctNifti([8, 8, 2])),
      400,
      "bad_query",
      /cleanupMinMl must be >= 0, got -3/,
    );
    await expectError(t, await post("/v1/segment?modle=tiny", ctNifti([8, 8, 2])), 400, "bad_query", /unknown parameter "modle"/);
    await expectError(
      t,
      await post("/v1/components?connectivity=7", labels(1)),
      400,
      "bad_query",
      /connectivity must be equal to one of the allowed values \(6, 18, 26\), got 7/,
    );
    await expectError(
      t,
      await post("/v1/evaluate?nsdToleranceMm=abc", form({ gt: labels(1), pred: labels(1) }) as never, {}),
      400,
      "bad_query",
      /nsdToleranceMm must be number/,
    );
    await expectError(t, await fetch(`${s.url}/v1/results/not-an-id/labels.nii.gz`), 400, "bad_request", /params\.id/);
    await expectError(t, await fetch(`${s.url}/v1/results/${"f".repeat(32)}/labels.nii.gz`), 404, "not_found");
    // bodies: not NIfTI, too large, empty
    await expectError(t, await post("/v1/components", Buffer.from("not a nifti ".repeat(40))), 400, "bad_nifti");
    await expectError(t, await post("/v1/components", Buffer.alloc(0)), 400, "bad_nifti");
    t.is((await fetch(`${s.url}/v1/health`)).status, 200);
  } finally {
    await s.close();
  }
  const small = await start({ modelDir, maxBodyBytes: 4096 });
  try {
    await expectError(
      t,
      await fetch(`${small.url}/v1/components`, { method: "POST", body: Buffer.alloc(10_000), headers: octet }),
      413,
      "too_large",
      /10000 bytes; this server takes at most 4096/,
    );
    // without a content-length (chunked), counted while read
    const chunked = new ReadableStream({ start: (c) => (c.enqueue(new Uint8Array(10_000)), c.close()) });
    await expectError(
      t,
      await fetch(`${small.url}/v1/components`, { method: "POST", body: chunked, headers: octet, duplex: "half" } as RequestInit),
      413,
      "too_large",
      /more than 4096 bytes/,
    );
  } finally {
    await small.close();
  }
});

test.serial("tta as the document says: a boolean, true and false both accepted", async (t) => {
  const s = await start({ modelDir });
  try {
    const api = await (await fetch(`${s.url}/v1/openapi.json`)).json();
    const tta = api.paths["/v1/segment"].post.parameters.find((p: { name: string }) => p.name === "tta");
    t.is(tta.schema.type, "boolean");
    for (const v of ["true", "false"])
      t.is(
        (await fetch(`${s.url}/v1/segment?model=tiny&tta=${v}`, { method: "POST", body: ctNifti([32, 32, 4]), headers: octet })).status,
        200,
        v,
      );
    // anything else is refused, not silently read as false
    for (const v of ["yes", "on", "maybe"])
      t.is(
        (await fetch(`${s.url}/v1/segment?model=tiny&tta=${v}`, { method: "POST", body: ctNifti([32, 32, 4]), headers: octet })).status,
        400,
        v,
      );
  } finally {
    await s.close();
  }
});

test.serial("the OpenAPI document lists exactly the routes registered", async (t) => {
  const app = await createServer({ modelDir, logger: false, resultDir: tempDir("bhsd-res-") });
  try {
    await app.ready();
    const res = await app.inject({ method: "GET", url: "/v1/openapi.json" });
    const api = JSON.parse(res.body);
    t.is(api.openapi, "3.0.3");
    const documented = Object.entries(api.paths as Record<string, Record<string, unknown>>)
      .flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`))
      .sort();
    // fastify's own route tree, `:id` written as OpenAPI's `{id}`
    // (a tree: each line "── segment (METHODS)" under its parent, four columns a level)
    const tree = app.printRoutes({ commonPrefix: false });
    const stack: string[] = [];
    const all: string[] = [];
    for (const line of tree.split("\n")) {
      const m = /── (\S+)(?: \(([A-Z, ]+)\))?$/.exec(line);
      if (!m) continue;
      const depth = (line.indexOf("── ") - 1) / 4;
      stack.length = depth;
      stack.push(m[1]!);
      const path = stack.join("").replace(/\/+/g, "/");
      if (m[2]) for (const method of m[2].split(", ")) all.push(`${method} ${path.replace(/:(\w+)/g, "{$1}")}`);
    }
    // the API is what the document describes; the web viewer's page and assets are not API
    const viewer = all.filter((r) => !/ \/v1\//.test(r)).sort();
    t.deepEqual(viewer, ["GET /", "GET /viewer/case.json", "GET /viewer/niivue.js"]);
    const registered = all.filter((r) => / \/v1\//.test(r)).sort();
    t.deepEqual(documented, registered);
    // and they are the routes README promises
    t.deepEqual(
      registered,
      [
        "GET /v1/health",
        "GET /v1/info",
        "GET /v1/openapi.json",
        "GET /v1/results/{id}/labels.nii.gz",
        "POST /v1/components",
        "POST /v1/evaluate",
        "POST /v1/segment",
      ].sort(),
    );
    // every query parameter a route validates is documented with its schema
    t.deepEqual(
      api.paths["/v1/components"].post.parameters.map((p: { name: string; schema: unknown }) => [p.name, p.schema]),
      [["connectivity", { type: "integer", enum: [6, 18, 26], default: 26 }]],
    );
    t.truthy(api.paths["/v1/segment"].post.requestBody.content["application/octet-stream"]);
    t.deepEqual(api.paths["/v1/evaluate"].post.requestBody.content["multipart/form-data"].schema.required, ["gt", "pred"]);
    t.deepEqual(api.paths["/v1/health"].get.security, []);
  } finally {
    await app.close();
  }
});

test.serial("the bearer scheme is case-insensitive (RFC 7235); the token itself is not", async (t) => {
  const s = await start({ modelDir, token: "s3cret" });
  try {
    for (const h of ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR   s3cret"])
      t.is((await fetch(`${s.url}/v1/info`, { headers: { authorization: h } })).status, 200, h);
    for (const h of ["Bearer S3CRET", "Basic s3cret", "Bearers3cret", "s3cret", "Bearer"]) {
      const r = await fetch(`${s.url}/v1/info`, { headers: { authorization: h } });
      await expectError(t, r, 401, "unauthorized");
      t.is(r.headers.get("www-authenticate"), "Bearer");
    }
    // an unknown route with no token is 401 too, in the same shape
    await expectError(t, await fetch(`${s.url}/v1/secret-route`), 401, "unauthorized");
    t.is((await fetch(`${s.url}/v1/health`)).status, 200);
  } finally {
    await s.close();
  }
});

test.serial("serve() installs no signal handlers and does not exit", async (t) => {
  const before = { int: process.listenerCount("SIGINT"), term: process.listenerCount("SIGTERM") };
  const app = await serve({ modelDir, logger: false, port: 0, resultDir: tempDir("bhsd-res-") });
  try {
    t.deepEqual({ int: process.listenerCount("SIGINT"), term: process.listenerCount("SIGTERM") }, before);
  } finally {
    await app.close();
  }
});

test.serial("bhsd serve: --log-level info logs no line per request; SIGTERM stops it with exit 0", async (t) => {
  const resultDir = tempDir("bhsd-res-");
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "lib/cli/main.ts",
      "serve",
      "--port",
      "0",
      "--model-dir",
      modelDir,
      "--result-dir",
      resultDir,
      "--log-level",
      "info",
    ],
    {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let out = "",
    err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  try {
    const end = Date.now() + 60_000;
    let m: RegExpExecArray | null = null;
    while (!(m = /serving on 127\.0\.0\.1:(\d+)/.exec(err))) {
      if (Date.now() > end || child.exitCode !== null) throw new Error(`no start: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = `http://127.0.0.1:${m[1]}`;
    for (let i = 0; i < 20; i++) t.is((await fetch(`${url}/v1/health`)).status, 200);
    t.is((await fetch(`${url}/v1/components`, { method: "POST", body: "x", headers: octet })).status, 400);
    const logged = out.split("\n").filter((l) => l.trim());
    t.false(
      logged.some((l) => /incoming request|request completed/.test(l)),
      logged.slice(0, 3).join("\n"),
    );
    t.true(logged.length <= 3, `${logged.length} log lines for 21 requests`);
    child.kill("SIGTERM");
    t.is(await exited, 0);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
  // a wrong level is refused, naming the option
  const bad = spawn(process.execPath, ["--import", "tsx", "lib/cli/main.ts", "serve", "--port", "0", "--log-level", "loud"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let berr = "";
  bad.stderr.on("data", (d) => (berr += d));
  const code = await new Promise<number | null>((res) => bad.on("exit", (c) => res(c)));
  t.not(code, 0);
  t.regex(berr, /--log-level <level>' argument 'loud' is invalid\. Allowed choices are fatal, error, warn, info, debug, trace, silent/);
});

test("createServer's options are checked, naming the option, what was expected and what came", async (t) => {
  const make = (o: Record<string, unknown>) => createServer({ modelDir, logger: false, resultDir: tempDir("bhsd-res-"), ...o });
  await t.throwsAsync(make({ maxVoxels: 0 }), { message: "Expected a number >= 1 for options.maxVoxels but received 0" });
  await t.throwsAsync(make({ concurrency: 1.5 }), { message: "Expected an integer >= 1 for options.concurrency but received 1.5" });
  await t.throwsAsync(make({ queue: -1 }), { message: "Expected an integer >= 0 for options.queue but received -1" });
  await t.throwsAsync(make({ jobTimeoutMs: "10" }), { message: 'Expected a number >= 1 for options.jobTimeoutMs but received "10"' });
  await t.throwsAsync(make({ maxRequestBytes: 100, maxInflightBytes: 50 }), {
    message: "options.maxInflightBytes (50) must be at least options.maxRequestBytes (100)",
  });
  await t.throwsAsync(make({ logLevel: "loud" }), {
    message: /Expected one of fatal, error, warn, info, debug, trace, silent for options.logLevel but received loud/,
  });
});
