// Builds the extension (dist/extension.js), the webview's markdown helper (dist/markdown.js) and,
// with --tests, the unit tests (out/test/*.test.js, run by `node --test`).
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";

const args = new Set(process.argv.slice(2));
const production = args.has("--production");
const common = { bundle: true, sourcemap: !production, minify: production, logLevel: "warning", target: "node20" };

if (args.has("--tests")) {
  rmSync("out", { recursive: true, force: true });
  const tests = readdirSync("test").filter((f) => f.endsWith(".test.ts")).map((f) => `test/${f}`);
  await esbuild.build({ ...common, entryPoints: tests, outdir: "out/test", platform: "node", format: "cjs",
                        external: ["vscode"] });
} else {
  const builds = [
    { ...common, entryPoints: ["src/extension.ts"], outfile: "dist/extension.js", platform: "node", format: "cjs",
      external: ["vscode"] },
    { ...common, entryPoints: ["src/markdown.ts"], outfile: "dist/markdown.js", platform: "browser", format: "iife",
      globalName: "corollaMarkdown", target: "es2020" },
  ];
  if (args.has("--watch")) {
    for (const options of builds) await (await esbuild.context(options)).watch();
  } else {
    await Promise.all(builds.map((options) => esbuild.build(options)));
  }
}
