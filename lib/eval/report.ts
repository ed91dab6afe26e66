/**
 * Text tables of evaluation rows: aligned columns for a terminal, or
 * Markdown for a README.
 *
 * @module
 */

import { shareLabel } from "./config.ts";
import type { EvalRow } from "./row.ts";

/** Options of {@linkcode formatTable}. */
export interface TableOptions {
  /** Markdown table (default: aligned plain text). */
  markdown?: boolean;
  /** Column names to show (default: all of {@linkcode TABLE_COLUMNS}). */
  columns?: string[];
}

/** A table cell: formats one field of a row. */
export type TableCell = (r: EvalRow) => string;
const pct = (x: number | null, digits = 1) =>
  x === null || !Number.isFinite(x) ? "-" : (100 * x).toFixed(digits);
const num = (x: number | null, digits: number) =>
  x === null || !Number.isFinite(x) ? "-" : x.toFixed(digits);

/** The columns {@linkcode formatTable} knows, in order: header and cell. */
export const TABLE_COLUMNS: ReadonlyArray<[string, TableCell]> = [
  ["policy", (r) => r.policy],
  ["context", (r) => String(r.context)],
  [
    "budget",
    (r) => r.base_policy === "full" ? "all" : `${r.budget} (${shareLabel(r.budget_share)})`,
  ],
  ["page", (r) => String(r.page_size)],
  ["sink/win", (r) => `${r.sink / r.page_size}/${r.window / r.page_size}`],
  ["tau", (r) => r.tau === null ? "-" : String(r.tau)],
  ["correction", (r) => r.correction ?? "-"],
  ["cache pages", (r) => r.cache_pages === null ? "-" : String(r.cache_pages)],
  ["agree %", (r) => pct(r.agreement, 2)],
  ["KL", (r) => num(r.kl, 4)],
  ["mass %", (r) => pct(r.mass_recall, 2)],
  ["min head mass %", (r) => pct(r.mass_recall_min_head)],
  ["greedy len", (r) => num(r.greedy_match_len, 1)],
  ["greedy same %", (r) => pct(r.greedy_share)],
  ["corrected %", (r) => r.base_policy === "freekv" ? pct(r.corrected_share) : "-"],
  ["cos mean", (r) => num(r.cosine_mean, 3)],
  ["cos p10", (r) => num(r.cosine_p10, 3)],
  ["resident hit %", (r) => pct(r.resident_hit_rate)],
];

/**
 * Formats rows as a table, one line per row.
 *
 * @example
 * ```ts
 * import { formatTable } from "./report.ts";
 * console.log(formatTable([], { markdown: true }).split("\n")[0].startsWith("| policy")); // true
 * ```
 */
export function formatTable(rows: readonly EvalRow[], options: TableOptions = {}): string {
  const columns = options.columns
    ? TABLE_COLUMNS.filter(([name]) => options.columns!.includes(name))
    : TABLE_COLUMNS;
  const header = columns.map(([name]) => name);
  const body = rows.map((r) => columns.map(([, cell]) => cell(r)));
  if (options.markdown) {
    const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
    const rule = columns.map((_, i) => (i === 0 ? "---" : "--:"));
    return [line(header), line(rule), ...body.map(line)].join("\n");
  }
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(header), ...body.map(line)].join("\n");
}
