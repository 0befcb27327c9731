/**
 * The two platform types the public declarations name, AbortSignal (options.signal) and URL (a
 * file given as a URL), declared empty so that dist/index.d.ts compiles for a TypeScript user with
 * neither Node's types (@types/node) nor the DOM library; where either is present these empty
 * interfaces merge into the real ones and change nothing. test/package.test.ts compiles such a user.
 */
declare global {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface AbortSignal {}
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type
  interface URL {}
}
export {};
