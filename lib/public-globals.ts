/**
 * The two platform types the public declarations name, AbortSignal (options.signal) and URL (a
 * file given as a URL), declared empty — and the disposal symbols — so that dist/index.d.ts compiles for a TypeScript user with
 * neither Node's types (@types/node) nor the DOM library; where either is present these empty
 * interfaces merge into the real ones and change nothing. test/package.test.ts compiles such a user.
 */
declare global {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface AbortSignal {}
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface URL {}
  // (the symbols a model's `await using` disposes it by, Node ≥ 20.4's; declared as ES2025's
  // disposable library and @types/node declare them, with which these merge)
  interface SymbolConstructor {
    readonly asyncDispose: unique symbol;
    readonly dispose: unique symbol;
  }
}
export {};
