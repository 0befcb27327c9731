#!/usr/bin/env node
/** The `bhsd` command line. Every command has --help, those that print results --json; bad input → one line, exit 1. */
import { Command, CommanderError } from "commander";
import { VERSION } from "../version.js";
import { batchCommand } from "./batch.js";
import { benchCommand } from "./bench.js";
import { componentsCommand } from "./components.js";
import { demoCommand } from "./demo.js";
import { evaluateCommand } from "./evaluate.js";
import { infoCommand } from "./info.js";
import { phantomCommand } from "./phantom.js";
import { segmentCommand } from "./segment.js";
import { serveCommand } from "./serve.js";
import { trainCommand } from "./train.js";
import { viewCommand } from "./view.js";
import { workerCommand } from "./worker.js";
import { DEFAULT_MAX_INPUT_MB, guardTerminalOutput, intArg, setMaxInputMb } from "./util.js";

guardTerminalOutput();

const program = new Command();
program
  .name("bhsd")
  .description("Find, measure and quantify intracranial hemorrhage on head CT")
  .version(VERSION)
  .option("--verbose", "print stack traces on errors")
  .option(
    "--max-input-mb <MiB>",
    `refuse a NIfTI input whose voxel data exceed this many MiB, from its header, before reading or inflating it (default ${DEFAULT_MAX_INPUT_MB}: a head CT is well under it)`,
    intArg("--max-input-mb", 1, 64 * 1024),
    DEFAULT_MAX_INPUT_MB,
  )
  .showHelpAfterError("(add --help for usage)")
  .addHelpText(
    "after",
    "\nOutputs are checked before any work: an output that is an input (also through a symlink or hard link), two outputs naming one file\n" +
      "or a missing output folder is refused; outputs are written to hidden temporaries and appear only when the command succeeds.",
  )
  .exitOverride()
  .hook("preAction", (cmd) => setMaxInputMb(cmd.opts().maxInputMb as number));

infoCommand(program);
evaluateCommand(program);
componentsCommand(program);
segmentCommand(program);
serveCommand(program);
benchCommand(program);
phantomCommand(program);
trainCommand(program);
viewCommand(program);
demoCommand(program);
workerCommand(program);
batchCommand(program);

function verbose(): boolean {
  return process.argv.includes("--verbose");
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode;
  } else {
    const err = e as Error;
    process.stderr.write(`bhsd: ${verbose() ? (err.stack ?? err.message) : err.message.split("\n")[0]}\n`);
    process.exitCode = 1;
  }
}
