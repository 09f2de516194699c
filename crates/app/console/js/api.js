// The public API, as any client calls it: a bearer key, JSON in and out, RFC 9457 problems as
// errors, and `Retry-After` honoured (after a 429 or 503 every request waits it out).

import { sleep } from './dom.js';

const KEY = 'userexport.key';
const ROLE = 'userexport.role';

/** The signed-in key, kept in this tab's sessionStorage only (never a URL or a cookie). */
export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  get role() { return sessionStorage.getItem(ROLE); },
  start(key, role) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(ROLE, role);
  },
  end() {
    sessionStorage.clear();
  },
};

/** A refused request: its status, its problem document and its `Retry-After` (seconds or null). */
export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem?.detail || problem?.title || `The API answered ${status}.`);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem ?? {};
    this.retryAfter = retryAfter;
  }

  /** `errors[]` of a validation problem: `{field, code, message}`. */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }

  /** The problem's slug (`validation`, `rate-limited`...). */
  get kind() {
    return String(this.problem.type ?? '').split('/').pop();
  }
}

/** Seconds of a `Retry-After` header (delta or HTTP date), or null without one. */
export function retryAfterSeconds(headers) {
  const raw = headers.get('Retry-After');
  if (raw === null) return null;
  const seconds = Number(raw);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(raw);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

let holdUntil = 0;
const events = new EventTarget();

/** Listens for `throttled` (detail: seconds) and `unauthorised` (the session key was refused). */
export function on(type, listener) {
  events.addEventListener(type, listener);
}

/**
 * Sends one request. `raw` returns the `Response` itself (for downloads; a redirect to another
 * origin is not followed); otherwise `{data, status, retryAfter, location}`.
 */
export async function request(method, path, { body, key = session.key, idempotencyKey, raw = false } = {}) {
  const wait = holdUntil - Date.now();
  if (wait > 0) await sleep(wait);
  const headers = new Headers({ Accept: raw ? '*/*' : 'application/json' });
  if (key) headers.set('Authorization', `Bearer ${key}`);
  if (body !== undefined) headers.set('Content-Type', 'application/json');
  if (idempotencyKey) headers.set('Idempotency-Key', idempotencyKey);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      redirect: raw ? 'manual' : 'follow',
    });
  } catch {
    throw new ApiError(0, { title: 'API unreachable', detail: 'The API did not answer; is it running?' }, 5);
  }
  const retryAfter = retryAfterSeconds(response.headers);
  if (raw && (response.ok || response.type === 'opaqueredirect')) return response;
  if (response.ok) {
    const data = response.status === 204 ? null : await response.json();
    return { data, status: response.status, retryAfter, location: response.headers.get('Location') };
  }
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  if ((response.status === 429 || response.status === 503) && retryAfter !== null) {
    holdUntil = Math.max(holdUntil, Date.now() + retryAfter * 1000);
    events.dispatchEvent(new CustomEvent('throttled', { detail: retryAfter }));
  }
  if (response.status === 401 && key && key === session.key) {
    events.dispatchEvent(new CustomEvent('unauthorised'));
  }
  throw new ApiError(response.status, problem, retryAfter);
}

export const get = (path, options) => request('GET', path, options);
export const post = (path, body, options = {}) => request('POST', path, { ...options, body });
export const patch = (path, body, options = {}) => request('PATCH', path, { ...options, body });
export const remove = (path, options) => request('DELETE', path, options);

/** A fresh `Idempotency-Key`, so a form sent twice (a double click, a retry) acts once. */
export function newIdempotencyKey() {
  return `console-${crypto.randomUUID()}`;
}
