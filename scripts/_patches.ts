// Replaced methods of WebGPU prototypes for the profiling diagnostics of
// scripts/profile.ts (the pass timer, the call counter): each original is
// put back when the patches are disposed. The library never patches anything.

/** Methods replaced until disposed; the originals come back in reverse order. */
export class PrototypePatches implements Disposable {
  #undo: (() => void)[] = [];

  /** Replaces `target[name]` with `make(original)`. */
  patch<T extends object, K extends keyof T>(
    target: T,
    name: K,
    make: (original: T[K]) => T[K],
  ): void {
    const original = target[name];
    target[name] = make(original);
    this.#undo.push(() => {
      target[name] = original;
    });
  }

  [Symbol.dispose](): void {
    for (const undo of this.#undo.reverse()) undo();
    this.#undo = [];
  }
}
