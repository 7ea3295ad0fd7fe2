// The /admin/* API, with the bearer token: asked for on a 401, kept in this
// tab's sessionStorage only.

const TOKEN_KEY = 'tss.admin-token';

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

let tokenPrompt = null;
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById('token-dialog');
  const msg = document.getElementById('token-message');
  msg.textContent = message || '';
  msg.hidden = !message;
  tokenPrompt = new Promise((resolve) => {
    const form = document.getElementById('token-form');
    const input = document.getElementById('token-input');
    input.value = '';
    form.addEventListener('submit', function done(e) {
      e.preventDefault();
      if (!input.value) return;
      sessionStorage.setItem(TOKEN_KEY, input.value);
      form.removeEventListener('submit', done);
      dialog.close();
      tokenPrompt = null;
      updateTokenButton();
      resolve();
    });
    dialog.showModal();
    input.focus();
  });
  return tokenPrompt;
}

export function updateTokenButton() {
  document.getElementById('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
}

export async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) {
      await askToken(token ? 'That token was refused. Enter the admin token.' : '');
      continue;
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.statusText, data && data.field);
    return data;
  }
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  updateTokenButton();
}
