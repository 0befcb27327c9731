// ESLint (flat config): JavaScript's recommended rules and typescript-eslint's strict set over
// every TypeScript and JavaScript file of the package, its tests, benches and scripts.
// `npm run lint` runs it with Prettier's check and clang-format's (CI runs `npm run lint`).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "build/", "build-*/", "prebuilds/", "node_modules/", "coverage/", "test/fixtures/", "bench/device/results/"] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: {
        console: "readonly",
        process: "readonly",
        Buffer: "readonly",
        URL: "readonly",
        setTimeout: "readonly",
        clearTimeout: "readonly",
        setInterval: "readonly",
        clearInterval: "readonly",
        setImmediate: "readonly",
        performance: "readonly",
        structuredClone: "readonly",
        AbortController: "readonly",
        AbortSignal: "readonly",
        TextDecoder: "readonly",
        TextEncoder: "readonly",
        queueMicrotask: "readonly",
        fetch: "readonly",
        globalThis: "readonly",
        SharedArrayBuffer: "readonly",
        Atomics: "readonly",
        WebAssembly: "readonly",
        DOMException: "readonly",
        document: "readonly",
        window: "readonly",
      },
    },
    rules: {
      // the tree compiles with noUncheckedIndexedAccess: typed-array and tuple reads carry `!` where the
      // bounds were checked before the loop (2,000 of them); the assertion is the project's convention
      "@typescript-eslint/no-non-null-assertion": "off",
      // `ok && f()` and `c ? f() : g()` as statements are used on purpose (short branches in hot loops)
      "@typescript-eslint/no-unused-expressions": ["error", { allowShortCircuit: true, allowTernary: true }],
      // unused arguments and caught errors named with a leading underscore are intended
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
    },
  },
);
