/**
 * Statistics of the retrieval engine: per decode step and running totals.
 *
 * @module
 */

/** Statistics of one decode step (all layers, from `beginStep` to `endStep`). */
export interface StepStats {
  /** Index of the step (0 = first decode step). */
  step: number;
  /** GPU-to-JS answers awaited during the step that were not ready yet. */
  hostWaits: number;
  /** Milliseconds spent in those waits. */
  hostWaitMs: number;
  /** Page-table entries attended, summed over layers, sequences and KV heads (holes included). */
  pagesAttended: number;
  /** Pages chosen by the selection kernels this step, summed over layers, sequences and KV heads. */
  pagesSelected: number;
  /** Pages recalled from the host during the step. */
  pagesRecalled: number;
  /** Bytes recalled from the host during the step. */
  bytesRecalled: number;
  /** (layer, sequence, KV head) correction checks whose outcome became known during the step. */
  headsChecked: number;
  /** Of those, the corrected ones. */
  headsCorrected: number;
  /**
   * Milliseconds of `beginStep` on the CPU: taking the pending answer (any
   * wait for it included), admitting its selections into the slot caches,
   * writing the residency rows and issuing the recall.
   */
  beginMs: number;
  /** Milliseconds of the step on the CPU, from `beginStep` to `endStep`. */
  totalMs: number;
}

/** Running totals over all steps. */
export interface EngineTotals {
  /** Decode steps ended. */
  steps: number;
  /** Pages recalled. */
  pagesRecalled: number;
  /** Bytes recalled. */
  bytesRecalled: number;
  /** Pages offloaded to the host. */
  pagesOffloaded: number;
  /** Host waits inside steps. */
  hostWaits: number;
  /** Milliseconds of host waits inside steps. */
  hostWaitMs: number;
  /** Corrections per (layer, KV head), summed over sequences: `[layer * Hkv + head]`. */
  correctionsPerHead: number[];
  /** Checks per (layer, KV head), summed over sequences. */
  checksPerHead: number[];
  /** Share of checked head-steps that were corrected. */
  correctedShare: number;
  /**
   * Share of a corrected head's fresh selection that was already on the GPU
   * when it attended (before any recall); 0 when nothing was corrected.
   */
  residentHitRate: number;
}

/** Accumulates {@linkcode EngineTotals}; the engine's bookkeeping. */
export class StatsAccumulator {
  steps = 0;
  pagesRecalled = 0;
  bytesRecalled = 0;
  pagesOffloaded = 0;
  hostWaits = 0;
  hostWaitMs = 0;
  correctedPages = 0;
  correctedResidentPages = 0;
  readonly corrections: number[];
  readonly checks: number[];
  current: StepStats | null = null;
  last: StepStats | null = null;

  /** Totals of `numLayers * numKvHeads` heads. */
  constructor(heads: number) {
    this.corrections = new Array(heads).fill(0);
    this.checks = new Array(heads).fill(0);
  }

  /** Starts the stats of step `step`. */
  begin(step: number): StepStats {
    this.current = {
      step,
      hostWaits: 0,
      hostWaitMs: 0,
      pagesAttended: 0,
      pagesSelected: 0,
      pagesRecalled: 0,
      bytesRecalled: 0,
      headsChecked: 0,
      headsCorrected: 0,
      beginMs: 0,
      totalMs: 0,
    };
    return this.current;
  }

  /** Records a host wait of `ms`. */
  wait(ms: number): void {
    this.hostWaits++;
    this.hostWaitMs += ms;
    if (this.current) {
      this.current.hostWaits++;
      this.current.hostWaitMs += ms;
    }
  }

  /** Records a recall. */
  recalled(pages: number, bytes: number): void {
    this.pagesRecalled += pages;
    this.bytesRecalled += bytes;
    if (this.current) {
      this.current.pagesRecalled += pages;
      this.current.bytesRecalled += bytes;
    }
  }

  /** Records one correction check of `head` (index `layer * Hkv + h`). */
  checked(head: number, corrected: boolean, selected: number, resident: number): void {
    this.checks[head]++;
    if (this.current) this.current.headsChecked++;
    if (!corrected) return;
    this.corrections[head]++;
    this.correctedPages += selected;
    this.correctedResidentPages += resident;
    if (this.current) this.current.headsCorrected++;
  }

  /** The totals. */
  totals(): EngineTotals {
    const checks = this.checks.reduce((a, b) => a + b, 0);
    const corrections = this.corrections.reduce((a, b) => a + b, 0);
    return {
      steps: this.steps,
      pagesRecalled: this.pagesRecalled,
      bytesRecalled: this.bytesRecalled,
      pagesOffloaded: this.pagesOffloaded,
      hostWaits: this.hostWaits,
      hostWaitMs: this.hostWaitMs,
      correctionsPerHead: [...this.corrections],
      checksPerHead: [...this.checks],
      correctedShare: checks ? corrections / checks : 0,
      residentHitRate: this.correctedPages ? this.correctedResidentPages / this.correctedPages : 0,
    };
  }
}
