/**
 * Charts beyond the sweep lines of `plot.ts`, drawn with Observable Plot on
 * a linkedom document (no browser) and returned as standalone SVG text:
 * {@linkcode renderPlot} for any Plot specification, {@linkcode plotTimeline}
 * for where a decode step's time goes, and {@linkcode svgDisplay}, which
 * shows SVG text inline in a Jupyter Deno notebook.
 *
 * @module
 */

import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";

/** Observable Plot's chart specification (marks, scales, size), as `Plot.plot` takes it. */
export type PlotSpec = Plot.PlotOptions;

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * Renders an Observable Plot specification to standalone SVG text (a white
 * background and the SVG namespace, so that a file or an `<img>` shows it).
 * The `document` option is supplied; a chart with a legend (which Plot wraps
 * in a `<figure>`) is refused: use marks that label themselves, or draw the
 * legend as a second chart.
 *
 * @throws {TypeError} when the specification draws a figure rather than one SVG.
 *
 * @example
 * ```ts
 * import * as Plot from "@observablehq/plot";
 * import { renderPlot } from "./charts.ts";
 * const svg = renderPlot({
 *   marks: [Plot.barY([{ page: 3, score: 1.5 }, { page: 4, score: 0.5 }], { x: "page", y: "score" })],
 * });
 * console.log(svg.startsWith("<svg")); // true
 * ```
 */
export function renderPlot(options: PlotSpec): string {
  const dom = parseHTML("<!doctype html><html><body></body></html>") as unknown as {
    document: Plot.PlotOptions["document"];
  };
  const chart = Plot.plot({
    style: { background: "white" },
    ...options,
    document: dom.document,
  }) as unknown as {
    tagName: string;
    setAttribute(name: string, value: string): void;
    outerHTML: string;
  };
  if (chart.tagName.toLowerCase() !== "svg") {
    throw new TypeError(
      `Cannot render a plot as the specification must draw one SVG (no legend): received a <${chart.tagName.toLowerCase()}>`,
    );
  }
  chart.setAttribute("xmlns", SVG_NS);
  return chart.outerHTML;
}

/** One span of time on a {@linkcode plotTimeline} row. */
export interface TimelineSegment {
  /** Row (for example the policy). */
  row: string;
  /** What the time went to (the colour), for example `host wait`. */
  phase: string;
  /** Start, ms. */
  start: number;
  /** End, ms (at least `start`). */
  end: number;
}

/** Options of {@linkcode plotTimeline}. */
export interface TimelineOptions {
  /** Title above the chart. */
  title?: string;
  /** Phases in legend and colour order (default: in order of appearance). */
  phases?: readonly string[];
  /** Colours of `phases`, in the same order (default: Plot's categorical scheme). */
  colors?: readonly string[];
  /** x axis label (default `ms`). */
  xLabel?: string;
  /** Chart width in px (default 720). */
  width?: number;
}

/**
 * Draws a timeline: one row per `row`, each segment a bar from `start` to
 * `end` coloured by `phase`, with a legend of the phases drawn as marks
 * (so the result stays one SVG). Segments whose end is before their start
 * or not finite are left out.
 *
 * @example
 * ```ts
 * import { plotTimeline } from "./charts.ts";
 * const svg = plotTimeline([
 *   { row: "sync-offload", phase: "record", start: 0, end: 2 },
 *   { row: "sync-offload", phase: "host wait", start: 2, end: 13 },
 *   { row: "freekv", phase: "record", start: 0, end: 2 },
 * ], { title: "one decode step" });
 * console.log(svg.includes("host wait")); // true
 * ```
 */
export function plotTimeline(
  segments: readonly TimelineSegment[],
  options: TimelineOptions = {},
): string {
  const data = segments.filter((s) =>
    Number.isFinite(s.start) && Number.isFinite(s.end) && s.end >= s.start
  );
  const phases = options.phases ? [...options.phases] : [...new Set(data.map((s) => s.phase))];
  const rows = [...new Set(data.map((s) => s.row))];
  const color: Plot.ScaleOptions = { type: "categorical", domain: phases };
  if (options.colors) color.range = [...options.colors];
  // Legend items left to right, each as wide as its name (about 6.5 px a character).
  let offset = 0;
  const legend = phases.map((phase) => {
    const x = offset;
    offset += 24 + Math.ceil(6.5 * phase.length);
    return { phase, x };
  });
  const rowHeight = 34;
  return renderPlot({
    width: options.width ?? 720,
    height: 70 + rows.length * rowHeight + 26,
    marginTop: options.title ? 46 : 30,
    marginLeft: 100,
    marginBottom: 40,
    x: { label: options.xLabel ?? "ms", grid: true, nice: true },
    y: { domain: rows, label: null },
    color,
    marks: [
      Plot.barX(data, {
        x1: "start",
        x2: "end",
        y: "row",
        fill: "phase",
        inset: 0.5,
        title: (s: TimelineSegment) => `${s.phase}: ${(s.end - s.start).toFixed(2)} ms`,
      }),
      // The legend, as marks along the top edge (one pair per phase: a dot and its name).
      ...legend.flatMap(({ phase, x }) => [
        Plot.dot([phase], {
          frameAnchor: "top-left",
          dx: x,
          dy: -14,
          fill: (p: string) => p,
          symbol: "square",
          r: 5,
        }),
        Plot.text([phase], {
          frameAnchor: "top-left",
          text: (p: string) => p,
          textAnchor: "start",
          dx: x + 8,
          dy: -14,
        }),
      ]),
      ...(options.title
        ? [
          Plot.text([options.title], {
            frameAnchor: "top-left",
            dx: -95,
            dy: -36,
            textAnchor: "start",
            fontWeight: "bold",
            fontSize: 12,
          }),
        ]
        : []),
    ],
  });
}

/**
 * SVG text that a Jupyter Deno cell displays as an image (its
 * `Symbol.for("Jupyter.display")` method); see {@linkcode svgDisplay}.
 *
 * @example
 * ```ts
 * import { SvgDisplay } from "./charts.ts";
 * const shown = new SvgDisplay('<svg xmlns="http://www.w3.org/2000/svg"></svg>');
 * const hook = Reflect.get(shown, Symbol.for("Jupyter.display")) as () => object;
 * console.log(Object.keys(hook.call(shown))); // [ "image/svg+xml" ]
 * ```
 */
export class SvgDisplay {
  /** The SVG text. */
  readonly svg: string;

  /** Wraps `svg`. */
  constructor(svg: string) {
    this.svg = svg;
  }

  /** The Jupyter display hook of the Deno kernel: one `image/svg+xml` output. */
  [Symbol.for("Jupyter.display")](): Record<string, string> {
    return { "image/svg+xml": this.svg };
  }
}

/**
 * Wraps SVG text so that a Jupyter Deno cell displays it inline (as the
 * cell's value, or through `Deno.jupyter.display`); the notebook keeps it
 * as an `image/svg+xml` output, which a repository page renders.
 *
 * @example
 * ```ts
 * import { svgDisplay } from "./charts.ts";
 * const shown = svgDisplay('<svg xmlns="http://www.w3.org/2000/svg"></svg>');
 * console.log(shown.svg.length); // 44
 * ```
 */
export function svgDisplay(svg: string): SvgDisplay {
  return new SvgDisplay(svg);
}
