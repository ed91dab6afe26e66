/**
 * The kernels, one file each with its CPU reference beside it in
 * `*_reference.ts` and its WGSL in `shaders/`. The kernel contract
 * (attention, KV append, query similarity and the page-table builder follow
 * it; summaries, selection, layout and the roofline are moving to it):
 * `createX(device, shape)` validates the shape; `plan(...)` validates a step's sizes on the CPU and uploads them,
 * returning a reusable plan (`update(...)`, `[Symbol.dispose]`); and
 * `plan.encode(encoder, buffers, { timestampWrites })` only records into the
 * caller's `GPUCommandEncoder`. Inputs the GPU produces (page tables, flags)
 * are passed as buffers.
 *
 * @module
 */

export {
  type AttentionBuffers,
  type AttentionEncodeOptions,
  type AttentionPlan,
  type AttentionShape,
  type AttentionTables,
  createPagedAttention,
  EMPTY_SLOT,
  type PagedAttention,
  pagedAttention,
  type PagedAttentionInputs,
  type PagedAttentionOptions,
  type PagedAttentionResult,
} from "./attention.ts";
export { pagedAttentionReference } from "./attention_reference.ts";
export {
  createKvAppend,
  type KvAppend,
  type KvAppendBuffers,
  type KvAppendOptions,
  type KvAppendPlan,
  type KvAppendRows,
} from "./kv_append.ts";
export { type KvAppendInputs, kvAppendReference } from "./kv_append_reference.ts";
export {
  createPageSummarizer,
  type PageSummarizer,
  type PageSummaryBuffers,
  type PageSummaryInputs,
  type PageSummaryJob,
  type PageSummaryJobs,
  type PageSummaryOptions,
  type PageSummaryPlan,
  summarizePages,
  SUMMARY_KINDS,
  summaryFloatsPerPage,
  type SummaryKind,
} from "./summaries.ts";
export { pageSummariesReference } from "./summaries_reference.ts";
export {
  createPageSelector,
  type PageSelectionBuffers,
  type PageSelectionInputs,
  type PageSelectionPlan,
  type PageSelectionStep,
  type PageSelector,
  type PageSelectorOptions,
  POOLING_MODES,
  type PoolingMode,
  selectPages,
} from "./selection.ts";
export { type PageSelectionReference, selectPagesReference } from "./selection_reference.ts";
export {
  createQuerySimilarity,
  type QuerySimilarity,
  querySimilarity,
  type QuerySimilarityBuffers,
  type QuerySimilarityInputs,
  type QuerySimilarityOptions,
  type QuerySimilarityPlan,
  type QuerySimilarityResult,
  type QuerySimilarityStep,
} from "./similarity.ts";
export { querySimilarityReference } from "./similarity_reference.ts";
export * from "./layout.ts";
export * from "./page_table.ts";
export * from "./page_table_reference.ts";
export * from "./roofline.ts";
