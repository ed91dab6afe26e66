/**
 * Builds the page and serves it on 127.0.0.1: web/ (index.html, style.css,
 * the bundle in web/dist/) and the stories260K files under
 * /models/stories260K/.
 *
 * Usage: deno run -A scripts/web_serve.ts [--port N] [--no-build]
 */
import { parseArgs } from "node:util";
import { flagChecks } from "./_flags.ts";
import { buildWeb } from "./web_build.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  css: "text/css; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  map: "application/json; charset=utf-8",
  png: "image/png",
  bin: "application/octet-stream",
};

/** URL path -> file, for the files the page may load; anything else is a 404. */
function resolve(pathname: string): string | null {
  if (pathname === "/") pathname = "/index.html";
  if (pathname.includes("..") || pathname.includes("\\")) return null;
  const model = pathname.match(/^\/models\/stories260K\/(stories260K\.bin|tok512\.bin)$/);
  if (model) return `${ROOT}models/stories260K/${model[1]}`;
  if (/^\/(index\.html|style\.css|dist\/[\w.-]+)$/.test(pathname)) return `${ROOT}web${pathname}`;
  return null;
}

/** Options of {@linkcode serveWeb}. */
export interface ServeWebOptions {
  /** Port on 127.0.0.1; 0 picks a free one (default 8000). */
  port?: number;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** Called once listening, with the page's URL. */
  onListen?: (url: string) => void;
}

/** Serves the built page on 127.0.0.1 (build it first with `buildWeb`). */
export function serveWeb(options: ServeWebOptions = {}): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({
    hostname: "127.0.0.1",
    port: options.port ?? 8000,
    signal: options.signal,
    onListen: ({ port }) => options.onListen?.(`http://127.0.0.1:${port}/`),
  }, async (request) => {
    const { pathname } = new URL(request.url);
    const path = resolve(pathname);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("method not allowed", { status: 405 });
    }
    if (!path) return new Response("not found", { status: 404 });
    try {
      const file = await Deno.open(path, { read: true });
      const size = (await file.stat()).size;
      const ext = path.slice(path.lastIndexOf(".") + 1);
      return new Response(request.method === "HEAD" ? null : file.readable, {
        headers: {
          "content-type": TYPES[ext] ?? "application/octet-stream",
          "content-length": String(size),
          "cache-control": "no-store",
          // Cross-origin isolation: performance.now() at 5 µs instead of 100 µs.
          "cross-origin-opener-policy": "same-origin",
          "cross-origin-embedder-policy": "require-corp",
        },
      });
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        const hint = pathname.startsWith("/dist/") ? " (run deno task web:build)" : "";
        return new Response(`not found${hint}`, { status: 404 });
      }
      throw error;
    }
  });
}

if (import.meta.main) {
  const HELP = `Usage: deno run -A scripts/web_serve.ts [options]   (deno task web)

Builds the page (web/, see scripts/web_build.ts) and serves it with the
stories260K model on http://127.0.0.1:PORT/. Open it in a browser with
WebGPU; add ?quick for a short story and small benchmark shapes.

Options:
  --port N     port on 127.0.0.1 (default 8000; 0 picks a free one)
  --no-build   serve the existing web/dist/ without rebuilding
  --help       this text`;
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "8000" },
      "no-build": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const { intFlag } = flagChecks("web");
  const port = intFlag("port", values.port, 0)!;
  if (port > 65535) flagChecks("web").fail(`--port must be at most 65535: received ${port}`);
  if (!values["no-build"]) await buildWeb();
  serveWeb({ port, onListen: (url) => console.log(`web: serving the page on ${url}`) });
}
