// Follows resources while they change: each is read again only after the `Retry-After` its
// last answer carried, and no longer once an answer carries none (it is finished). With many
// followed at once the pace slows, so a tab never eats a key's whole rate limit.

const MIN_DELAY_MS = 500;
/** Requests per second all followed resources may take together. */
const BUDGET_PER_S = 6;
const HIDDEN_FACTOR = 4;

export class Poller {
  #timers = new Map();

  /**
   * Follows `id`: `load()` resolves `{data, retryAfter}`, `onData(data)` gets each answer,
   * `onError(error)` the error that stops following (transient ones are retried).
   */
  watch(id, load, onData, onError = () => {}, firstDelaySeconds = 0) {
    this.stop(id);
    // This watch's own entry: a load still in flight when `id` is stopped or watched again
    // must end its loop, not carry on beside the new one.
    const token = Symbol(id);
    const mine = () => this.#timers.get(id)?.token === token;
    const run = async () => {
      let delay;
      try {
        const { data, retryAfter } = await load();
        if (!mine()) return;
        onData(data);
        if (retryAfter === null) {
          this.#timers.delete(id);
          return;
        }
        delay = retryAfter * 1000;
      } catch (error) {
        if (!mine()) return;
        if (error.retryAfter === null || error.retryAfter === undefined) {
          this.#timers.delete(id);
          onError(error);
          return;
        }
        delay = error.retryAfter * 1000;
      }
      const fair = (this.#timers.size * 1000) / BUDGET_PER_S;
      const pace = Math.max(delay, MIN_DELAY_MS, fair) * (document.hidden ? HIDDEN_FACTOR : 1);
      this.#timers.set(id, { token, handle: setTimeout(run, pace) });
    };
    this.#timers.set(id, { token, handle: setTimeout(run, firstDelaySeconds * 1000) });
  }

  has(id) {
    return this.#timers.has(id);
  }

  stop(id) {
    clearTimeout(this.#timers.get(id)?.handle);
    this.#timers.delete(id);
  }

  stopAll() {
    for (const id of [...this.#timers.keys()]) this.stop(id);
  }
}
