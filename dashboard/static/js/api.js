// The HTTP API, as the page calls it. The API key, when the worker needs
// one, is kept in sessionStorage: for this tab only, gone when it closes.

const KEY = 'dronehub.apiKey';

// The API's root: the page is served under <root>/ui/, so a reverse
// proxy's path prefix is kept.
export const root = new URL('../', document.baseURI);

export function apiURL(path, query) {
  const u = new URL(path.replace(/^\//, ''), root);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, v);
  }
  return u;
}

export function getKey() {
  return sessionStorage.getItem(KEY) || '';
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function headers(extra = {}) {
  const h = { Accept: 'application/json', ...extra };
  const k = getKey();
  if (k) h.Authorization = 'Bearer ' + k;
  return h;
}

// ApiError is a refused or failed call: the HTTP status and the problem
// detail the API answered with.
export class ApiError extends Error {
  constructor(status, detail, fields) {
    super(status ? `HTTP ${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
    this.fields = fields || [];
  }
}

// authNeeded tells the app that the worker wants a (valid) API key.
export function authNeeded(detail) {
  window.dispatchEvent(new CustomEvent('dronehub:auth', { detail: { detail, hadKey: !!getKey() } }));
}

// problemDetail reads an error answer's detail.
export async function problemDetail(res) {
  const text = await res.text().catch(() => '');
  try {
    const p = JSON.parse(text);
    if (p && p.detail) return { detail: p.detail, fields: p.errors };
  } catch {
    // not JSON: the text itself
  }
  return { detail: text.trim() || res.statusText || 'no answer' };
}

// api calls the API and returns {status, data, headers}; an answer that is
// not 2xx throws an ApiError holding the problem detail.
export async function api(method, path, { query, body, signal } = {}) {
  const init = { method, headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}), signal, cache: 'no-store' };
  if (body !== undefined) init.body = typeof body === 'string' ? body : JSON.stringify(body);
  let res;
  try {
    res = await fetch(apiURL(path, query), init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The worker did not answer (' + e.message + '). It may be down or restarting.');
  }
  if (!res.ok) {
    const { detail, fields } = await problemDetail(res);
    if (res.status === 401) authNeeded(detail);
    throw new ApiError(res.status, detail, fields);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  return { status: res.status, data, headers: res.headers };
}
