#!/usr/bin/env node
/** The `bhsd` command line. Every command has --help and --json; bad input → one line, exit 1. */
import { Command, CommanderError } from "commander";
import { VERSION } from "../version.js";
import { benchCommand } from "./bench.js";
import { componentsCommand } from "./components.js";
import { demoCommand } from "./demo.js";
import { evaluateCommand } from "./evaluate.js";
import { infoCommand } from "./info.js";
import { phantomCommand } from "./phantom.js";
import { segmentCommand } from "./segment.js";
import { serveCommand } from "./serve.js";
import { trainCommand } from "./train.js";

const program = new Command();
program
  .name("bhsd")
  .description("Find, measure and quantify intracranial hemorrhage on head CT")
  .version(VERSION)
  .option("--verbose", "print stack traces on errors")
  .showHelpAfterError("(add --help for usage)")
  .exitOverride();

infoCommand(program);
evaluateCommand(program);
componentsCommand(program);
segmentCommand(program);
serveCommand(program);
benchCommand(program);
phantomCommand(program);
trainCommand(program);
demoCommand(program);

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
    process.stderr.write(`bhsd: ${verbose() ? err.stack ?? err.message : err.message.split("\n")[0]}\n`);
    process.exitCode = 1;
  }
}
