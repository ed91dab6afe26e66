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
  /**
   * Field (or accessor) on the x axis, e.g. `budget_share` or `tau`; text
   * values (a pooling mode) make a categorical axis in first-seen order.
   */
  x: keyof Row & string | ((row: Row) => number | string);
  /** Field (or accessor) on the y axis, e.g. `agreement`. */
  y: keyof Row & string | ((row: Row) => number);
  /** Field (or accessor) naming each line (default `policy`). */
  series?: keyof Row & string | ((row: Row) => string);
  /**
   * Field (or accessor) splitting the chart into panels stacked vertically
   * (e.g. `context`); default one panel.
   */
  facet?: keyof Row & string | ((row: Row) => string | number);
  /** Name printed before each panel's value (default: the field name). */
  facetLabel?: string;
  /** Title drawn above the chart. */
  title?: string;
  /** x axis label (default: the field name). */
  xLabel?: string;
  /** y axis label (default: the field name). */
  yLabel?: string;
  /** x axis type (default `linear`; `log` suits budgets). */
  xType?: "linear" | "log" | "point";
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
  const fx = accessor<Row, number | string>(options.x), fy = accessor<Row, number>(options.y);
  const fs = accessor<Row, string>(options.series ?? ("policy" as keyof Row & string));
  const ff = options.facet ? accessor<Row, string | number>(options.facet) : () => "";
  const data = rows
    .map((r) => {
      const x = fx(r);
      return {
        x: typeof x === "string" ? x : Number(x),
        y: Number(fy(r)),
        series: String(fs(r)),
        facet: ff(r),
      };
    })
    .filter((d) => (typeof d.x === "string" ? d.x !== "" : Number.isFinite(d.x)))
    .filter((d) => Number.isFinite(d.y));
  const categorical = data.some((d) => typeof d.x === "string");
  const order = [...new Set(data.map((d) => String(d.x)))];
  data.sort((a, b) =>
    a.series.localeCompare(b.series) ||
    (categorical
      ? order.indexOf(String(a.x)) - order.indexOf(String(b.x))
      : (a.x as number) - (b.x as number))
  );
  const dom = parseHTML("<!doctype html><html><body></body></html>") as unknown as {
    document: Plot.PlotOptions["document"];
  };
  const name = (f: unknown, fallback: string) => typeof f === "string" ? f : fallback;
  const facets = new Set(data.map((d) => d.facet)).size;
  const marks: Plot.Markish[] = [
    Plot.frame({ strokeOpacity: facets > 1 ? 0.2 : 0 }),
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
  if (options.facet) {
    // Each panel is named above its frame.
    const values = [...new Set(data.map((d) => d.facet))];
    const label = options.facetLabel ?? name(options.facet, "");
    marks.push(
      Plot.text(values, {
        fy: (d) => d,
        text: (d) => `${label} ${d}`,
        frameAnchor: "top",
        dy: -10,
        fontWeight: "bold",
      }),
    );
  }
  if (options.title) {
    // Above the frame and the y-axis label, from the chart's left edge.
    marks.push(
      Plot.text([options.title], {
        facet: "super",
        frameAnchor: "top-left",
        dx: -50,
        dy: options.facet ? -52 : -38,
        textAnchor: "start",
        fontWeight: "bold",
        fontSize: 12,
      }),
    );
  }
  const chart = Plot.plot({
    document: dom.document,
    width: options.width ?? 640,
    height: options.height ?? (options.facet ? 80 + 240 * facets : 360),
    fy: options.facet ? { axis: null, padding: 0.18 } : undefined,
    facet: options.facet ? { data, y: "facet" } : undefined,
    marginTop: (options.title ? 50 : 20) + (options.facet ? 14 : 0),
    marginRight: 130,
    marginLeft: 55,
    style: { background: "white" },
    x: {
      label: options.xLabel ?? name(options.x, "x"),
      type: categorical ? "point" : options.xType ?? "linear",
      ...(categorical
        ? { domain: order, padding: 0.3 }
        : { ticks: [...new Set(data.map((d) => d.x as number))], tickFormat: options.xTickFormat }),
    },
    y: { label: options.yLabel ?? name(options.y, "y"), grid: false, nice: true },
    color: { type: "categorical" },
    marks,
  }) as unknown as { setAttribute(name: string, value: string): void; outerHTML: string };
  // A standalone file needs the SVG namespace (an <img> or a browser tab ignores it otherwise).
  chart.setAttribute("xmlns", SVG_NS);
  return chart.outerHTML;
}
