// REST calls with the session cookie. Errors become ApiError with the hub's code and message
// ({"error": {"code", "message"}}, docs/rest.md); a 401 anywhere means "signed out".

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

let onSignedOut = () => {};

/** Called with no arguments whenever a request answers 401. */
export function whenSignedOut(fn) { onSignedOut = fn; }

export async function request(method, path, body, {quiet401 = false} = {}) {
  const init = {method, cache: "no-store", credentials: "same-origin", headers: {}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", "The hub cannot be reached.");
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401 && !quiet401) onSignedOut();
    throw new ApiError(response.status, error.code, error.message);
  }
  return data;
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body, opts) => request("POST", path, body === undefined ? {} : body, opts);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const enc = encodeURIComponent;
