/**
 * The kernels, one file each with its CPU reference beside it in
 * `*_reference.ts` and its WGSL in `shaders/`. Every kernel (attention, KV
 * append, page summaries, page selection, query similarity, the page-table
 * builder, the NHD <-> HND layout conversions and the streaming-read
 * roofline) follows one contract:
 *
 * - `createX(device, shape)` validates the shape and compiles the pipeline
 *   (cached per device);
 * - `x.plan(...)` validates a step's sizes on the CPU (`TypeError` /
 *   `RangeError` before any GPU work) and uploads them into a plan that owns
 *   its uniforms and job tables, so that several plans of one kernel can be
 *   recorded into one submission; `plan.update(...)` re-plans it and
 *   `plan[Symbol.dispose]()` frees it;
 * - `plan.encode(encoder, buffers, { timestampWrites })` checks the buffers
 *   and only records into the caller's `GPUCommandEncoder`.
 *
 * Inputs the GPU produces (page tables, flags, selections) are passed as
 * buffers. One-shot helpers over typed arrays (`pagedAttention`,
 * `summarizePages`, `selectPages`, `querySimilarity`,
 * `measureReadBandwidth`) sit on top.
 *
 * @module
 */

export type { GpuKernel, GpuKernelPlan } from "./contract.ts";
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
  type KvAppendBindings,
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
  type PageSelectionVariant,
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
export {
  createHndToNhd,
  createNhdToHnd,
  type HndToNhd,
  type HndToNhdPlan,
  type KvLayoutKernel,
  type KvLayoutOptions,
  type KvLayoutPlan,
  type KvLayoutShape,
  type KvLayoutSizes,
  kvLayoutSizes,
  type LayoutBuffers,
  type NhdCacheBuffers,
  type NhdToHnd,
  type NhdToHndPlan,
  type NhdToHndPlanOptions,
  type RunSlotHeadJob,
  type SlotHeadJob,
} from "./layout.ts";
export {
  hndToNhdReference,
  type HndToNhdReferenceOptions,
  type NhdCacheArrays,
  nhdToHndReference,
} from "./layout_reference.ts";
export * from "./page_table.ts";
export * from "./page_table_reference.ts";
export * from "./roofline.ts";
export {
  SLOT_LAYOUTS,
  type SlotLayout,
  slotOffset,
  type SlotStrides,
  slotStrides,
} from "./slot_layout.ts";
