/**
 * Builds the page's bundle: web/main.ts and everything it imports (the
 * module, its WGSL shaders, Observable Plot) into web/dist/app.js.
 *
 * The bundler is `deno bundle` (esbuild inside Deno): it resolves modules
 * exactly as `deno run` and `deno test` do (deno.json imports, `npm:`
 * specifiers, and the shaders' `with { type: "text" }` imports, which it
 * inlines as strings), so the page runs the same module graph the tests run,
 * with no second resolver or loader plugin to keep in step and no extra
 * dependency beyond the Deno the project already pins.
 *
 * Usage: deno run -A scripts/web_build.ts [--minify]
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;
/** Where the bundle goes (git-ignored). */
export const WEB_DIST = `${ROOT}web/dist`;

/** Options of {@linkcode buildWeb}. */
export interface BuildWebOptions {
  /** Minify the bundle (default false). */
  minify?: boolean;
  /** Print deno bundle's output (default true). */
  verbose?: boolean;
}

/** Bundles web/main.ts into web/dist/app.js; returns the bundle's path. */
export async function buildWeb(options: BuildWebOptions = {}): Promise<string> {
  const out = `${WEB_DIST}/app.js`;
  await Deno.mkdir(WEB_DIST, { recursive: true });
  const args = [
    "bundle",
    "--quiet",
    "--platform",
    "browser",
    "--format",
    "esm",
    "--sourcemap",
    "linked",
    "-o",
    out,
    ...(options.minify ? ["--minify"] : []),
    "web/main.ts",
  ];
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`web build: deno ${args.join(" ")} failed:\n${text}`);
  if (options.verbose ?? true) {
    const size = (await Deno.stat(out)).size;
    console.error(`web build: ${out.slice(ROOT.length)} (${(size / 1024).toFixed(0)} KiB)`);
  }
  return out;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      minify: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(`Usage: deno run -A scripts/web_build.ts [--minify]

Bundles the page (web/main.ts with the module, its WGSL shaders and
Observable Plot) into web/dist/app.js with deno bundle.`);
    Deno.exit(0);
  }
  try {
    await buildWeb({ minify: values.minify });
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(1);
  }
}
