#!/usr/bin/env node
// ava's command line with its TAP reporter fixed for timeouts (used by scripts/run-tests.mjs).
// ava 7.0.0's TAP reporter hands the plain Error it makes for an inactivity timeout (and for a
// process.exit() in a test file) to dumpError(), which expects ava's serialized error and throws
// "Cannot set properties of undefined (setting 'name')": the reporter dies, the timed-out tests get
// no `not ok` line and the run ends without its summary. Here such an Error is given the serialized
// shape first, so each pending test is reported `not ok` with ava's own message. Running ava's
// entry point from this file (not with --import) keeps the patch out of the test workers, which
// inherit the main process's execArgv.
const tapUrl = new URL("../lib/reporters/tap.js", import.meta.resolve("ava"));
const { default: TapReporter } = await import(tapUrl.href);
const writeTest = TapReporter?.prototype?.writeTest;
if (typeof writeTest === "function") {
  TapReporter.prototype.writeTest = function (evt, flags) {
    const e = evt?.err;
    if (e instanceof Error) {
      evt = {
        ...evt,
        err: {
          type: "native",
          name: e.name,
          message: e.message,
          stack: e.stack ?? e.message,
          originalError: { message: e.message },
          formattedDetails: [],
        },
      };
    }
    return writeTest.call(this, evt, flags);
  };
} else {
  process.stderr.write("scripts/ava-tap.mjs: ava's TAP reporter has changed shape; running it unpatched\n");
}
await import(new URL("../entrypoints/cli.mjs", import.meta.resolve("ava")).href);
