// DOM helpers and formatting. Text always goes in through textContent,
// never as HTML.

export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

const SVGNS = 'http://www.w3.org/2000/svg';

export function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, kids);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class' && Array.isArray(v)) el.setAttribute('class', v.filter(Boolean).join(' '));
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...kids) {
  clear(el);
  append(el, kids);
  return el;
}

// --- Formatting --------------------------------------------------------------

export function pct(v) {
  return v === undefined || v === null ? '–' : `${Math.round(v)} %`;
}

export function battery(v) {
  return v === undefined || v === null ? '–' : `${Math.round(v * 100)} %`;
}

export function dateTime(t) {
  if (!t) return '–';
  const d = new Date(t);
  if (isNaN(d) || d.getFullYear() < 1971) return '–';
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function time(t) {
  if (!t) return '–';
  const d = new Date(t);
  if (isNaN(d) || d.getFullYear() < 1971) return '–';
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function duration(ms) {
  const sec = Math.round(Math.abs(ms) / 1000);
  if (sec < 60) return `${sec} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min ${sec % 60} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${m % 60} min`;
  return `${Math.floor(hr / 24)} d`;
}

export function eta(t) {
  if (!t) return '–';
  const ms = new Date(t) - Date.now();
  return ms <= 0 ? `due ${time(t)}` : `in ${duration(ms)}`;
}

export function metres(m) {
  if (m === undefined || m === null) return '–';
  return m >= 1000 ? `${(m / 1000).toFixed(2)} km` : `${Math.round(m)} m`;
}

export function badge(status) {
  return h('span', { class: ['badge', status] }, status || '–');
}

// missionOf is a mission's status: its output once it ended with one, else
// its custom status.
export function missionOf(st) {
  if (!st) return null;
  if (st.output && typeof st.output === 'object' && st.output.phase) return st.output;
  if (st.customStatus && typeof st.customStatus === 'object') return st.customStatus;
  return null;
}

export function isMission(st) {
  return st && st.name === 'DeliveryMission';
}

export const ENDED = new Set(['Completed', 'Failed', 'Terminated', 'Canceled']);

export const CONDITIONS = [
  ['idle', 'Idle', 'I'],
  ['reserved', 'Reserved', 'R'],
  ['flying', 'Flying', 'F'],
  ['fault', 'Fault', '!'],
  ['lowBattery', 'Low battery', 'B'],
  ['silent', 'Silent', 'S'],
];

export function conditionLabel(c) {
  const e = CONDITIONS.find(([k]) => k === c);
  return e ? e[1] : c || 'unknown';
}

export function conditionLetter(c) {
  const e = CONDITIONS.find(([k]) => k === c);
  return e ? e[2] : '?';
}

// --- Messages and the confirmation dialog ------------------------------------

export function message(el, kind, text) {
  el.className = 'msg ' + (kind || '');
  el.textContent = text || '';
}

// confirmAction asks before an action. fields: [{name, label, value,
// placeholder, textarea, required}]. It resolves to the field values, or
// null when the operator keeps things as they are.
export function confirmAction({ title, message: text, fields = [], confirmLabel = 'Confirm', danger = false }) {
  const dlg = document.getElementById('confirm');
  const form = document.getElementById('confirm-form');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-message').textContent = text;
  const ok = document.getElementById('confirm-ok');
  ok.textContent = confirmLabel;
  ok.className = danger ? 'primary danger' : 'primary';
  const box = clear(document.getElementById('confirm-fields'));
  const inputs = fields.map((f, i) => {
    const id = `confirm-f${i}`;
    const input = f.textarea
      ? h('textarea', { id, name: f.name, placeholder: f.placeholder || '', required: f.required })
      : h('input', { id, name: f.name, type: 'text', placeholder: f.placeholder || '', required: f.required, autocomplete: 'off' });
    input.value = f.value || '';
    box.append(h('div', { class: 'field' }, h('label', { for: id, text: f.label }), input));
    return input;
  });
  // The answer is taken when it is given (the submit, or Escape), not on
  // the dialog's close event, which comes later: a quick second action
  // must not see the first one's close.
  return new Promise((resolve) => {
    const ac = new AbortController();
    const finish = (confirmed) => {
      ac.abort();
      if (!confirmed) return resolve(null);
      const out = {};
      fields.forEach((f, i) => { out[f.name] = inputs[i].value; });
      resolve(out);
    };
    form.addEventListener('submit', (e) => finish(!!e.submitter && e.submitter.value === 'ok'), { signal: ac.signal });
    dlg.addEventListener('cancel', () => finish(false), { signal: ac.signal });
    form.reset();
    inputs.forEach((inp, i) => { inp.value = fields[i].value || ''; });
    dlg.showModal();
    (inputs[0] || ok).focus();
  });
}
