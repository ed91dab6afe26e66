// The page in a real headless browser: Debian's chromium driven by
// playwright-core, WebGPU on SwiftShader. The greedy full and freekv stories
// shown must equal Deno's for the same settings, the bench table must have
// every policy row, and no WebGPU error may reach the console. Saves a
// screenshot to docs/web_page.png.
//
// Skipped when /usr/bin/chromium is absent, unless FREEKV_REQUIRE_BROWSER=1.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import {
  createEngineBackend,
  createGpuModel,
  generateText,
  loadModel,
  type PolicyName,
  resolveBudget,
} from "../mod.ts";
import { testGpu } from "./_gpu.ts";
import { buildWeb } from "../scripts/web_build.ts";
import { serveWeb } from "../scripts/web_serve.ts";
import { BENCH_VARIANTS } from "../web/decode_bench.ts";

const CHROMIUM = "/usr/bin/chromium";
const ROOT = new URL("..", import.meta.url).pathname;
const requireBrowser = Deno.env.get("FREEKV_REQUIRE_BROWSER") === "1";
// What the page does under ?quick: the demo's settings, a shorter story.
const STORY = { maxTokens: 200, budget: 96, pageSize: 8, tau: 0.9 };

const haveChromium = await Deno.stat(CHROMIUM).then(() => true, () => false);
if (!haveChromium && !requireBrowser) {
  console.warn(
    `web test skipped: ${CHROMIUM} is absent (apt-get install -y chromium; ` +
      "FREEKV_REQUIRE_BROWSER=1 makes this a failure)",
  );
}

/** The greedy stories Deno tells with the library, as the page does. */
async function denoStories(device: GPUDevice): Promise<Record<"full" | "freekv", string>> {
  const { config, weights, tokenizer } = await loadModel(
    `${ROOT}models/stories260K/stories260K.bin`,
    { tokenizer: `${ROOT}models/stories260K/tok512.bin` },
  );
  const retrieval = resolveBudget({ budget: STORY.budget, pageSize: STORY.pageSize });
  const out = { full: "", freekv: "" };
  for (const policy of ["full", "freekv"] as const satisfies PolicyName[]) {
    using attention = createEngineBackend(device, {
      ...config,
      ...retrieval,
      maxContext: config.maxSeqLen,
      policy,
      tau: STORY.tau,
    });
    using model = createGpuModel(device, weights, { attention });
    const r = await generateText(model, [config.bosId], {
      maxTokens: STORY.maxTokens,
      tokenizer: tokenizer!,
      stopTokens: [],
    });
    out[policy] = r.text;
  }
  return out;
}

interface PageResult {
  state: string;
  status: string;
  texts: Record<"full" | "freekv", string>;
  rows: { policy: string; cells: string[] }[];
  hostWait: string;
  plotted: boolean;
  console: { type: string; text: string }[];
  pageErrors: string[];
  seconds: number;
}

/** Builds, serves and loads the page (?quick) in headless chromium. */
async function runPage(): Promise<PageResult> {
  await buildWeb({ verbose: false });
  const controller = new AbortController();
  const { promise: listening, resolve } = Promise.withResolvers<string>();
  const server = serveWeb({ port: 0, signal: controller.signal, onListen: resolve });
  const url = await listening;
  const profile = await Deno.makeTempDir({ prefix: "freekv-chromium-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 900 },
    args: [
      "--enable-unsafe-webgpu",
      "--enable-features=Vulkan",
      "--use-angle=swiftshader",
      "--use-webgpu-adapter=swiftshader",
      "--headless=new",
      "--no-sandbox",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    const consoleMessages: { type: string; text: string }[] = [];
    const pageErrors: string[] = [];
    page.on("console", (m) => consoleMessages.push({ type: m.type(), text: m.text() }));
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    const t0 = performance.now();
    await page.goto(`${url}?quick&tokens=${STORY.maxTokens}`);
    await page.waitForFunction('document.body.dataset.state !== "loading"', null, {
      timeout: 300_000,
      polling: 500,
    });
    const seconds = (performance.now() - t0) / 1000;
    // A string, evaluated in the page (the test is type-checked without DOM types).
    const result: Omit<PageResult, "console" | "pageErrors" | "seconds"> = await page.evaluate(
      `(() => {
      const text = (s) => document.querySelector(s)?.textContent ?? "";
      return {
        state: document.body.dataset.state ?? "",
        status: text("#status"),
        texts: { full: text("#story-full .text"), freekv: text("#story-freekv .text") },
        rows: [...document.querySelectorAll("#bench tbody tr")].map((tr) => ({
          policy: tr.getAttribute("data-policy") ?? "",
          cells: [...tr.children].map((c) => c.textContent ?? ""),
        })),
        hostWait: text("#host-wait"),
        plotted: document.querySelector("#bench-plot svg") !== null,
      };
    })()`,
    );
    await Deno.mkdir(`${ROOT}docs`, { recursive: true });
    await page.screenshot({ path: `${ROOT}docs/web_page.png`, fullPage: true });
    return { ...result, console: consoleMessages, pageErrors, seconds };
  } finally {
    await context.close();
    controller.abort();
    await server.finished;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}

Deno.test({
  name: "the page in headless chromium shows Deno's stories and every bench policy",
  ignore: (!haveChromium || testGpu === null) && !requireBrowser,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    assert.ok(haveChromium, `${CHROMIUM} is absent and FREEKV_REQUIRE_BROWSER=1`);
    assert.ok(testGpu, "Deno has no WebGPU adapter to compute the reference stories");
    const [expected, page] = await Promise.all([denoStories(testGpu.device), runPage()]);
    console.log(`web test: the page finished in ${page.seconds.toFixed(1)} s; ${page.hostWait}`);
    assert.equal(page.pageErrors.length, 0, `page errors: ${page.pageErrors.join("\n")}`);
    // The page logs WebGPU errors and device loss with console.error; Chromium
    // reports invalid GPU objects and dropped commands as warnings.
    const gpuErrors = page.console.filter((m) =>
      m.type === "error" ||
      (m.type === "warning" && /WebGPU|GPU|Invalid|CommandBuffer|device lost/i.test(m.text))
    );
    assert.deepEqual(gpuErrors, [], "errors reached the console");
    assert.equal(page.state, "done", `the page did not finish: ${page.status}`);
    assert.ok(expected.full.length > 100, "Deno's full story is too short");
    assert.equal(page.texts.full, expected.full, "full: the page's story differs from Deno's");
    assert.equal(
      page.texts.freekv,
      expected.freekv,
      "freekv: the page's story differs from Deno's",
    );
    assert.deepEqual(page.rows.map((r) => r.policy), BENCH_VARIANTS.map((v) => v.name));
    for (const row of page.rows) {
      assert.ok(Number(row.cells[1]) > 0, `${row.policy}: median step ${row.cells[1]}`);
    }
    assert.ok(page.plotted, "the bench plot is missing");
    assert.match(page.hostWait, /mapAsync round trip \d+\.\d+ ms/);
  },
});
