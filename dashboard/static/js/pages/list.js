// The mission list and the orchestration list: a page of GET
// /api/missions or /api/instances with the listing's filters, kept up to
// date by the live feed.

import { api } from '../api.js';
import { h, replace, badge, pct, battery, eta, dateTime, missionOf, isMission, message } from '../ui.js';

const PAGE_SIZE = 25;
const STATUSES = ['Running', 'Pending', 'Suspended', 'Completed', 'Failed', 'Terminated', 'Canceled'];
export const PHASES = ['Created', 'DroneReserved', 'HeadedToPickup', 'PickedUp', 'HeadedToDropoff', 'Delivered', 'Returning', 'Completed', 'Failed', 'Cancelled'];

// Tokens of the pages before the current one, per listing, for "Previous".
const pageStacks = new Map();

function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d)) return '';
  const off = d.getTimezoneOffset() * 60000;
  return new Date(d - off).toISOString().slice(0, 16);
}

function isoFromLocal(v) {
  if (!v) return '';
  const d = new Date(v);
  return isNaN(d) ? '' : d.toISOString();
}

function columns(missions) {
  return missions
    ? [['id', 'Mission'], ['status', 'Status'], ['phase', 'Phase'], ['drone', 'Drone'], ['progress', 'Progress', 'num'], ['eta', 'ETA'], ['battery', 'Battery', 'num'], ['failure', 'Failure'], ['created', 'Created']]
    : [['id', 'Instance'], ['name', 'Orchestrator'], ['status', 'Status'], ['phase', 'Phase'], ['created', 'Created'], ['updated', 'Updated']];
}

function cell(col, st, scope) {
  const m = missionOf(st);
  const mission = isMission(st);
  switch (col) {
    case 'id': {
      const base = scope === 'missions' || mission ? '#/missions/' : '#/instances/';
      return h('a', { href: base + encodeURIComponent(st.instanceId) }, st.instanceId);
    }
    case 'name': return st.name;
    case 'status': return badge(st.runtimeStatus);
    case 'phase': return mission && m ? h('span', { class: 'phase-' + m.phase }, m.phase) : '–';
    case 'drone': return m && m.droneId ? h('a', { href: '#/fleet/' + encodeURIComponent(m.droneId) }, m.droneId) : '–';
    case 'progress': return m ? [h('progress', { max: 100, value: m.progressPct || 0, 'aria-hidden': 'true' }), ' ', pct(m.progressPct)] : '–';
    case 'eta': return m && m.eta && !['Completed', 'Failed', 'Cancelled'].includes(m.phase) ? eta(m.eta) : '–';
    case 'battery': return m ? battery(m.battery) : '–';
    case 'failure': return (m && m.failure) || (st.failureDetails && st.failureDetails.errorMessage) || '';
    case 'created': return dateTime(st.createdTime);
    case 'updated': return dateTime(st.lastUpdatedTime);
  }
  return '';
}

export function listPage(main, app, scope, params) {
  const missions = scope === 'missions';
  const q = {
    runtimeStatus: params.get('runtimeStatus') || '',
    phase: params.get('phase') || '',
    from: params.get('from') || '',
    to: params.get('to') || '',
    prefix: params.get('prefix') || '',
    name: missions ? '' : params.get('name') || '',
    token: params.get('page') || '',
  };
  const filterKey = scope + '|' + JSON.stringify({ ...q, token: '' });
  const stack = pageStacks.get(filterKey) || [];
  pageStacks.set(filterKey, stack);
  const cols = columns(missions);
  const statuses = new Map(); // instanceId → status shown
  const rows = new Map();
  let nextToken = '';
  let fresh = 0;

  const field = (id, label, input) => h('div', {}, h('label', { for: id, text: label }), input);
  const statusSel = h('select', { id: 'f-status', name: 'runtimeStatus' },
    h('option', { value: '' }, 'Any'),
    h('option', { value: 'Running,Pending,Suspended' }, 'Not ended'),
    STATUSES.map((st) => h('option', { value: st }, st)));
  statusSel.value = q.runtimeStatus;
  const phaseSel = h('select', { id: 'f-phase', name: 'phase' }, h('option', { value: '' }, 'Any'), PHASES.map((p) => h('option', { value: p }, p)));
  phaseSel.value = q.phase;
  const from = h('input', { id: 'f-from', name: 'from', type: 'datetime-local', value: localInput(q.from) });
  const to = h('input', { id: 'f-to', name: 'to', type: 'datetime-local', value: localInput(q.to) });
  const prefix = h('input', { id: 'f-prefix', name: 'prefix', type: 'text', value: q.prefix, autocomplete: 'off', spellcheck: 'false' });
  const name = h('input', { id: 'f-name', name: 'name', type: 'text', value: q.name, placeholder: 'any', autocomplete: 'off', spellcheck: 'false' });

  const form = h('form', { class: 'filters', 'aria-label': 'Filters', onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (statusSel.value) p.set('runtimeStatus', statusSel.value);
    if (missions && phaseSel.value) p.set('phase', phaseSel.value);
    if (from.value) p.set('from', isoFromLocal(from.value));
    if (to.value) p.set('to', isoFromLocal(to.value));
    if (prefix.value.trim()) p.set('prefix', prefix.value.trim());
    if (!missions && name.value.trim()) p.set('name', name.value.trim());
    app.go(`#/${scope}` + (p.toString() ? '?' + p : ''));
  } },
  field('f-status', 'Runtime status', statusSel),
  missions ? field('f-phase', 'Phase', phaseSel) : field('f-name', 'Orchestrator name', name),
  field('f-from', 'Created from', from),
  field('f-to', 'Created before', to),
  field('f-prefix', 'ID starts with', prefix),
  h('div', { class: 'buttons' },
    h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    h('button', { type: 'button', onclick: () => app.go(`#/${scope}`) }, 'Clear')));

  const msg = h('div', { class: 'msg', role: 'alert' });
  const info = h('p', { class: 'note', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const table = h('table', { class: 'responsive', id: 'list' },
    h('caption', { class: 'note', text: missions ? 'Missions, oldest first' : 'Instances of every orchestrator, oldest first' }),
    h('thead', {}, h('tr', {}, cols.map(([, label, cls]) => h('th', { scope: 'col', class: cls }, label)))),
    tbody);
  const prev = h('button', { type: 'button', disabled: !q.token, onclick: () => {
    const t = stack.pop() || '';
    go(t);
  } }, 'Previous page');
  const next = h('button', { type: 'button', disabled: true, onclick: () => {
    stack.push(q.token);
    go(nextToken);
  } }, 'Next page');
  const newNote = h('p', { class: 'note', hidden: true, 'aria-live': 'polite' });

  function go(token) {
    const p = new URLSearchParams(params);
    if (token) p.set('page', token);
    else p.delete('page');
    app.go(`#/${scope}` + (p.toString() ? '?' + p : ''));
  }

  replace(main,
    h('h1', { tabindex: '-1' }, missions ? 'Missions' : 'Orchestrations'),
    missions ? null : h('p', { class: 'note' }, 'Every orchestration on the task hub, missions included. Pick one to inspect its history and manage it.'),
    form, msg,
    h('div', { class: 'toolbar' }, prev, next, info),
    newNote,
    h('div', { class: 'table-wrap' }, table));

  function renderRow(st, flash) {
    let tr = rows.get(st.instanceId);
    const isNew = !tr;
    if (!tr) {
      tr = h('tr', { 'data-id': st.instanceId });
      rows.set(st.instanceId, tr);
      for (const [col, label, cls] of cols) tr.append(h('td', { 'data-col': col, 'data-label': label, class: cls }));
    }
    statuses.set(st.instanceId, st);
    // One element per cell: on a phone the cell is a label and a value.
    cols.forEach(([col], i) => replace(tr.children[i], h('span', {}, cell(col, st, scope))));
    if (flash && !isNew) {
      tr.classList.remove('flash');
      void tr.offsetWidth; // restart the highlight
      tr.classList.add('flash');
    }
    return tr;
  }

  function matches(st) {
    if (missions && !isMission(st)) return false;
    if (q.name && st.name !== q.name) return false;
    if (q.runtimeStatus && !q.runtimeStatus.split(',').includes(st.runtimeStatus)) return false;
    if (q.prefix && !st.instanceId.startsWith(q.prefix)) return false;
    if (q.from && new Date(st.createdTime) < new Date(q.from)) return false;
    if (q.to && new Date(st.createdTime) >= new Date(q.to)) return false;
    if (q.phase) {
      const m = missionOf(st);
      if (!m || m.phase !== q.phase) return false;
    }
    return true;
  }

  function updateInfo() {
    const n = rows.size;
    const shown = n ? `${n} shown${q.phase ? ' (phase filter applies to each page)' : ''}` : '';
    if (info.textContent !== shown) info.textContent = shown;
    if (!n) {
      if (!tbody.querySelector('.empty')) tbody.append(h('tr', { class: 'empty' }, h('td', { colspan: cols.length }, missions ? 'No missions match.' : 'No instances match.')));
    } else {
      for (const e of tbody.querySelectorAll('.empty')) e.remove();
    }
  }

  let alive = true;
  let loaded = false;
  async function load() {
    try {
      const { data } = await api('GET', `/api/${scope}`, { query: {
        runtimeStatus: q.runtimeStatus, createdTimeFrom: q.from, createdTimeTo: q.to, instanceIdPrefix: q.prefix,
        name: q.name, top: PAGE_SIZE, continuationToken: q.token,
      } });
      if (!alive) return;
      for (const st of data.instances || []) {
        if (q.phase && !matches(st)) continue;
        tbody.append(renderRow(st, false));
      }
      nextToken = data.continuationToken || '';
      next.disabled = !nextToken;
      loaded = true;
      updateInfo();
    } catch (e) {
      if (alive && e.status !== 401) message(msg, 'error', `Could not list ${missions ? 'missions' : 'instances'}: ${e.message}`);
    }
  }

  const onChange = (ev) => {
    for (const st of ev.detail.instances) {
      if (rows.has(st.instanceId)) {
        const old = statuses.get(st.instanceId);
        if (old && old.lastUpdatedTime === st.lastUpdatedTime && old.runtimeStatus === st.runtimeStatus) continue;
        renderRow(st, true);
      } else if (loaded && !ev.detail.snapshot && matches(st)) {
        if (!nextToken && rows.size < PAGE_SIZE) {
          // The last page has room: the listing is oldest first, so a new
          // instance belongs here.
          tbody.append(renderRow(st, false));
        } else {
          fresh++;
          replace(newNote, `${fresh} new matching ${fresh === 1 ? 'instance' : 'instances'} since this page was loaded. `,
            h('button', { type: 'button', class: 'link', onclick: () => app.render() }, 'Reload'));
          newNote.hidden = false;
        }
      }
    }
    for (const id of ev.detail.removed) {
      const tr = rows.get(id);
      if (tr) {
        tr.remove();
        rows.delete(id);
        statuses.delete(id);
      }
    }
    updateInfo();
  };
  app.live.addEventListener('change', onChange);
  // Relative times (ETA) age without changes.
  const timer = setInterval(() => {
    for (const [id, st] of statuses) {
      const tr = rows.get(id);
      const i = cols.findIndex(([c]) => c === 'eta');
      if (tr && i >= 0) replace(tr.children[i], h('span', {}, cell('eta', st, scope)));
    }
  }, 5000);
  app.live.follow(['instances', 'fleet']);
  load();
  return () => {
    alive = false;
    clearInterval(timer);
    app.live.removeEventListener('change', onChange);
  };
}
