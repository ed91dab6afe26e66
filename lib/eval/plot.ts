/**
 * Line charts of evaluation sweeps, drawn with Observable Plot on a
 * linkedom document (no browser): a metric against budget or tau, one line
 * per policy. Returns standalone SVG text, which a file can hold and a
 * Jupyter Deno cell can display.
 *
 * @module
 */

import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";

/** Options of {@linkcode plotSweep}. */
export interface SweepPlotOptions<Row> {
  /** Field (or accessor) on the x axis, e.g. `budget_share` or `tau`. */
  x: keyof Row & string | ((row: Row) => number);
  /** Field (or accessor) on the y axis, e.g. `agreement`. */
  y: keyof Row & string | ((row: Row) => number);
  /** Field (or accessor) naming each line (default `policy`). */
  series?: keyof Row & string | ((row: Row) => string);
  /** Title drawn above the chart. */
  title?: string;
  /** x axis label (default: the field name). */
  xLabel?: string;
  /** y axis label (default: the field name). */
  yLabel?: string;
  /** x axis type (default `linear`; `log` suits budgets). */
  xType?: "linear" | "log";
  /** Tick format of x values, e.g. shares as fractions (default Plot's). */
  xTickFormat?: (x: number) => string;
  /** Chart width in px (default 640). */
  width?: number;
  /** Chart height in px (default 360). */
  height?: number;
}

const SVG_NS = "http://www.w3.org/2000/svg";

function accessor<Row, T>(f: keyof Row & string | ((row: Row) => T)): (row: Row) => T {
  return typeof f === "function" ? f : (row: Row) => row[f] as T;
}

/**
 * Draws one sweep: `rows` grouped into lines by `series`, each line sorted
 * by x, with dots at the measured points and the series name at the line's
 * end. Rows whose x or y is not a finite number are left out.
 *
 * @example
 * ```ts
 * import { plotSweep } from "./plot.ts";
 * const svg = plotSweep([
 *   { policy: "freekv", budget_share: 0.125, agreement: 0.97 },
 *   { policy: "freekv", budget_share: 0.25, agreement: 0.99 },
 * ], { x: "budget_share", y: "agreement" });
 * console.log(svg.startsWith("<svg")); // true
 * ```
 */
export function plotSweep<Row>(rows: readonly Row[], options: SweepPlotOptions<Row>): string {
  const fx = accessor<Row, number>(options.x), fy = accessor<Row, number>(options.y);
  const fs = accessor<Row, string>(options.series ?? ("policy" as keyof Row & string));
  const data = rows
    .map((r) => ({ x: Number(fx(r)), y: Number(fy(r)), series: String(fs(r)) }))
    .filter((d) => Number.isFinite(d.x) && Number.isFinite(d.y))
    .sort((a, b) => a.series.localeCompare(b.series) || a.x - b.x);
  const dom = parseHTML("<!doctype html><html><body></body></html>") as unknown as {
    document: Plot.PlotOptions["document"];
  };
  const name = (f: unknown, fallback: string) => typeof f === "string" ? f : fallback;
  const marks: Plot.Markish[] = [
    Plot.gridY({ strokeOpacity: 0.15 }),
    Plot.line(data, { x: "x", y: "y", z: "series", stroke: "series", strokeWidth: 1.5 }),
    Plot.dot(data, { x: "x", y: "y", fill: "series", r: 2.5 }),
    Plot.text(
      data,
      Plot.selectLast({
        x: "x",
        y: "y",
        z: "series",
        text: "series",
        fill: "series",
        dx: 6,
        textAnchor: "start",
      }),
    ),
  ];
  if (options.title) {
    // Above the frame and the y-axis label, from the chart's left edge.
    marks.push(
      Plot.text([options.title], {
        frameAnchor: "top-left",
        dx: -50,
        dy: -38,
        textAnchor: "start",
        fontWeight: "bold",
        fontSize: 12,
      }),
    );
  }
  const chart = Plot.plot({
    document: dom.document,
    width: options.width ?? 640,
    height: options.height ?? 360,
    marginTop: options.title ? 50 : 20,
    marginRight: 130,
    marginLeft: 55,
    style: { background: "white" },
    x: {
      label: options.xLabel ?? name(options.x, "x"),
      type: options.xType ?? "linear",
      ticks: [...new Set(data.map((d) => d.x))],
      tickFormat: options.xTickFormat,
    },
    y: { label: options.yLabel ?? name(options.y, "y"), grid: false, nice: true },
    color: { type: "categorical" },
    marks,
  }) as unknown as { setAttribute(name: string, value: string): void; outerHTML: string };
  // A standalone file needs the SVG namespace (an <img> or a browser tab ignores it otherwise).
  chart.setAttribute("xmlns", SVG_NS);
  return chart.outerHTML;
}
