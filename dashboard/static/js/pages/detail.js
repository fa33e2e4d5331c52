// One mission or orchestration instance: its state, route and drone, phase
// timeline, battery, compensation record and history, with the management
// actions, each behind a confirmation.

import { api } from '../api.js';
import { RouteMap } from '../map.js';
import {
  h, s, replace, clear, badge, pct, battery, eta, dateTime, time, metres, duration,
  missionOf, isMission, message, confirmAction, conditionLabel, ENDED,
} from '../ui.js';

const HISTORY_PAGE = 20;
const MAX_SAMPLES = 240;

export function detailPage(main, app, scope, id) {
  const missionScope = scope === 'missions';
  const base = `/api/${scope}/${encodeURIComponent(id)}`;
  let st = null;
  let gone = false;
  let historyPage = -1; // -1: the last page
  let shownHistory = null;
  const samples = []; // battery: {t (ms), v}
  let alive = true;

  const heading = h('h1', { tabindex: '-1' }, `${missionScope ? 'Mission' : 'Instance'} ${id}`);
  const subtitle = h('p', { class: 'note', id: 'subtitle' });
  const msg = h('div', { class: 'msg', role: 'alert', id: 'action-msg' });
  const actions = h('div', { class: 'toolbar', role: 'group', 'aria-label': 'Actions' });
  const facts = h('dl', { class: 'facts', id: 'facts' });
  const mapSvg = s('svg', { role: 'img', 'aria-label': 'Route and drone position', id: 'route-map' });
  const routeMap = new RouteMap(mapSvg);
  const mapNote = h('p', { class: 'note' });
  const timeline = h('ol', { class: 'timeline', id: 'timeline' });
  const batteryText = h('p', { id: 'battery-text' });
  const spark = s('svg', { class: 'spark', viewBox: '0 0 300 60', preserveAspectRatio: 'none', role: 'img', 'aria-label': 'Battery over time' });
  const compensation = h('section', { class: 'panel', id: 'compensation', 'aria-labelledby': 'comp-h', hidden: true });
  const json = h('section', { class: 'panel', id: 'data', 'aria-labelledby': 'data-h' });
  const history = h('section', { class: 'panel', id: 'history', 'aria-labelledby': 'hist-h' });

  const sections = missionScope
    ? [
      h('div', { class: 'grid2' },
        h('section', { class: 'panel', 'aria-labelledby': 'map-h' }, h('h2', { id: 'map-h' }, 'Route'), mapSvg, mapNote),
        h('section', { class: 'panel', 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h' }, 'Status'), facts)),
      h('div', { class: 'grid2' },
        h('section', { class: 'panel', 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, 'Phase timeline'), timeline),
        h('section', { class: 'panel', 'aria-labelledby': 'bat-h' }, h('h2', { id: 'bat-h' }, 'Battery'), batteryText, spark,
          h('p', { class: 'note' }, 'Charge reported while this page is open; the trend is the mission\'s, from its last two signals.'))),
      compensation,
    ]
    : [h('section', { class: 'panel', 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h' }, 'Status'), facts), json];

  replace(main,
    h('p', { class: 'note' }, h('a', { href: `#/${scope}` }, missionScope ? '← All missions' : '← All orchestrations')),
    heading, subtitle, actions, msg, sections, history);

  // --- Actions ---------------------------------------------------------------

  const reasonField = { name: 'reason', label: 'Reason (optional, kept in the history)', placeholder: 'e.g. customer called' };
  const specs = [
    missionScope && {
      key: 'cancel', label: 'Cancel mission', danger: true, title: `Cancel mission ${id}?`,
      text: 'The mission stops and compensates its completed steps, newest first: it recalls and releases the drone, reschedules the package and tells the customer.',
      fields: [reasonField], done: 'Cancellation requested; the compensation record appears when it has run',
      call: (v) => api('POST', `${base}/cancel`, { query: { reason: v.reason } }),
    },
    {
      key: 'terminate', label: 'Terminate', danger: true, title: `Terminate ${id}?`,
      text: missionScope
        ? 'Terminating stops the mission where it stands, without compensation: the drone keeps its reservation. Cancel stops a mission cleanly.'
        : 'Terminating stops the instance where it stands; the reason becomes its output.',
      fields: [reasonField], done: 'Terminate requested',
      call: (v) => api('POST', `${base}/terminate`, { query: { reason: v.reason } }),
    },
    {
      key: 'suspend', label: 'Suspend', title: `Suspend ${id}?`, text: 'A suspended instance processes no events until it is resumed.',
      fields: [reasonField], done: 'Suspend requested',
      call: (v) => api('POST', `${base}/suspend`, { query: { reason: v.reason } }),
    },
    {
      key: 'resume', label: 'Resume', title: `Resume ${id}?`, text: 'The instance goes on with the events that arrived meanwhile.',
      fields: [reasonField], done: 'Resume requested',
      call: (v) => api('POST', `${base}/resume`, { query: { reason: v.reason } }),
    },
    {
      key: 'event', label: 'Raise event', title: `Raise an event on ${id}`,
      text: 'Only the events the orchestrator declares public can be raised; the worker refuses any other.',
      fields: [{ name: 'event', label: 'Event name', required: true, placeholder: 'e.g. approve' }, { name: 'payload', label: 'Payload (JSON, optional)', textarea: true, placeholder: '{"by": "ops"}' }],
      done: 'Event raised',
      call: (v) => api('POST', `${base}/events/${encodeURIComponent(v.event.trim())}`, { body: v.payload.trim() ? v.payload.trim() : undefined }),
    },
    {
      key: 'purge', label: 'Purge', danger: true, title: `Purge ${id}?`, text: 'Purging deletes an ended instance and its history for good.',
      fields: [], done: 'Purged: the instance and its history are deleted',
      call: () => api('DELETE', base),
    },
  ].filter(Boolean);
  for (const sp of specs) {
    actions.append(h('button', { type: 'button', class: sp.danger ? 'danger' : '', 'data-action': sp.key, onclick: () => act(sp) }, sp.label));
  }

  async function act(sp) {
    const v = await confirmAction({ title: sp.title, message: sp.text, fields: sp.fields, confirmLabel: sp.label, danger: sp.danger });
    if (!v) return;
    message(msg, '', '');
    try {
      const res = await sp.call(v);
      message(msg, 'ok', `${sp.done} (HTTP ${res.status}).`);
      if (sp.key === 'purge') {
        gone = true;
        render();
        return;
      }
      load();
    } catch (e) {
      message(msg, 'error', `Refused: ${e.message}`);
    }
  }

  // --- Rendering ---------------------------------------------------------------

  function droneOf(m) {
    if (!m || !m.droneId) return null;
    const d = app.live.drones.get(m.droneId);
    return d && d.missionId === id ? d : null;
  }

  function render() {
    if (gone) {
      replace(subtitle, 'This instance no longer exists (purged).');
      for (const b of actions.querySelectorAll('button')) b.disabled = true;
      return;
    }
    if (!st) return;
    const m = isMission(st) ? missionOf(st) : null;
    replace(subtitle, st.name, ' · ', badge(st.runtimeStatus), m ? [' · phase ', h('strong', { class: 'phase-' + m.phase, id: 'phase' }, m.phase)] : null);
    renderFacts(m);
    if (missionScope) {
      renderMap(m);
      renderTimeline(m);
      renderBattery(m);
      renderCompensation(m);
    } else {
      renderJSON();
    }
    if (st.history !== shownHistory) {
      shownHistory = st.history;
      renderHistory();
    }
  }

  function fact(k, v) {
    return [h('dt', {}, k), h('dd', {}, v)];
  }

  function renderFacts(m) {
    const out = [fact('Runtime status', badge(st.runtimeStatus))];
    if (m) {
      const drone = droneOf(m);
      out.push(
        fact('Phase', m.phase || '–'),
        fact('Drone', m.droneId ? h('a', { href: '#/fleet/' + encodeURIComponent(m.droneId) }, m.droneId) : '–'),
        fact('Progress', m.progressPct !== undefined ? `${pct(m.progressPct)} (${metres(m.distanceLeftM)} left)` : '–'),
        fact('ETA', ENDED.has(st.runtimeStatus) || ['Completed', 'Failed', 'Cancelled'].includes(m.phase) ? '–' : eta(m.eta)),
        fact('Battery', battery(drone && drone.state ? drone.state.battery : m.battery)),
        fact('Health', m.health || (drone ? drone.health : '–')),
        fact('Last telemetry', dateTime(m.lastTelemetryAt)),
      );
      if (m.failure) out.push(fact('Failure', m.failure));
    }
    if (st.failureDetails) out.push(fact('Failure details', `${st.failureDetails.errorType}: ${st.failureDetails.errorMessage}`));
    out.push(fact('Created', dateTime(st.createdTime)), fact('Updated', dateTime(st.lastUpdatedTime)));
    replace(facts, out);
  }

  function renderMap(m) {
    if (!m || !m.route) {
      replace(mapNote, 'The route appears once a drone is dispatched.');
      mapSvg.setAttribute('visibility', 'hidden');
      return;
    }
    mapSvg.removeAttribute('visibility');
    const drone = droneOf(m);
    let pos = null;
    let cond = 'flying';
    if (drone && drone.state) {
      pos = drone.state.position;
      cond = drone.condition;
    } else if (m.lastPosition) {
      pos = m.lastPosition;
      cond = ENDED.has(st.runtimeStatus) ? 'idle' : 'silent';
    }
    routeMap.draw(m.route, pos ? { id: m.droneId, position: pos, condition: cond } : null);
    let note = `${m.droneId}: ${conditionLabel(cond)}${drone ? ' (live)' : ' (last position the mission heard of)'}.`;
    if (!pos) note = drone ? `${m.droneId} has not reported a position yet.` : `${m.droneId} reported no position during this mission.`;
    replace(mapNote, note);
  }

  function renderTimeline(m) {
    const tl = (m && m.timeline) || [];
    if (!tl.length) {
      replace(timeline, h('li', {}, 'No phases yet.'));
      return;
    }
    const t0 = new Date(tl[0].at);
    replace(timeline, tl.map((e) => h('li', { 'data-phase': e.phase },
      h('strong', {}, e.phase), ' ', h('span', { class: 'note' }, `${time(e.at)} (+${duration(new Date(e.at) - t0)})`))));
  }

  function addSample(t, v) {
    if (v === undefined || v === null || !t) return;
    const ms = new Date(t).getTime();
    if (samples.some((x) => x.t === ms)) return;
    samples.push({ t: ms, v });
    samples.sort((a, b) => a.t - b.t);
    if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
  }

  function renderBattery(m) {
    if (!m) return;
    const drone = droneOf(m);
    addSample(m.lastTelemetryAt, m.battery);
    if (drone && drone.state) addSample(drone.state.timestamp, drone.state.battery);
    const now = drone && drone.state ? drone.state.battery : m.battery;
    const trend = m.batteryTrendPerMin;
    batteryText.textContent = now === undefined || now === null
      ? 'No battery report yet.'
      : `${battery(now)}` + (trend !== undefined && trend !== null ? `, trend ${(trend * 100).toFixed(2)} % per minute` : '');
    clear(spark);
    spark.append(s('line', { class: 'axis', x1: 0, y1: 59, x2: 300, y2: 59 }));
    if (samples.length < 2) return;
    const t0 = samples[0].t, t1 = samples[samples.length - 1].t || t0 + 1;
    let lo = Math.min(...samples.map((x) => x.v)), hi = Math.max(...samples.map((x) => x.v));
    if (hi - lo < 0.05) {
      const mid = (hi + lo) / 2;
      lo = mid - 0.025;
      hi = mid + 0.025;
    }
    const pts = samples.map((x) => `${((x.t - t0) / Math.max(t1 - t0, 1) * 300).toFixed(1)},${(56 - (x.v - lo) / (hi - lo) * 52).toFixed(1)}`);
    spark.append(s('polyline', { points: pts.join(' ') }));
  }

  function renderCompensation(m) {
    const comps = (m && m.compensations) || [];
    if (!comps.length && !(m && m.failure)) {
      compensation.hidden = true;
      return;
    }
    compensation.hidden = false;
    replace(compensation,
      h('h2', { id: 'comp-h' }, 'Compensation'),
      m.failure ? h('p', {}, h('strong', {}, 'Why: '), m.failure) : null,
      comps.length
        ? h('table', { class: 'responsive', id: 'compensations' },
          h('thead', {}, h('tr', {}, ['Step', 'Undo', 'Result', 'Error'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, comps.map((c) => h('tr', { 'data-step': c.step },
            h('td', { 'data-label': 'Step' }, c.step),
            h('td', { 'data-label': 'Undo' }, c.activity),
            h('td', { 'data-label': 'Result' }, c.status),
            h('td', { 'data-label': 'Error' }, c.error || '')))))
        : h('p', { class: 'note' }, 'Compensation is running…'));
  }

  function renderJSON() {
    const block = (title, v) => [h('h3', {}, title), h('pre', {}, v === null || v === undefined ? 'null' : JSON.stringify(v, null, 2))];
    replace(json, h('h2', { id: 'data-h' }, 'Data'), block('Input', st.input), block('Custom status', st.customStatus), block('Output', st.output));
  }

  function renderHistory() {
    const events = st.history || [];
    const pages = Math.max(1, Math.ceil(events.length / HISTORY_PAGE));
    const page = historyPage < 0 || historyPage >= pages ? pages - 1 : historyPage;
    const slice = events.slice(page * HISTORY_PAGE, (page + 1) * HISTORY_PAGE);
    const nav = pages > 1
      ? h('div', { class: 'toolbar', role: 'group', 'aria-label': 'History pages' },
        h('button', { type: 'button', disabled: page === 0, onclick: () => { historyPage = page - 1; renderHistory(); } }, 'Earlier'),
        h('span', {}, `Page ${page + 1} of ${pages}`),
        h('button', { type: 'button', disabled: page === pages - 1, onclick: () => { historyPage = page + 1 === pages - 1 ? -1 : page + 1; renderHistory(); } }, 'Later'))
      : null;
    replace(history,
      h('h2', { id: 'hist-h' }, `History (${events.length} events)`),
      nav,
      h('div', { class: 'table-wrap' }, h('table', { class: 'responsive', id: 'history-table' },
        h('thead', {}, h('tr', {}, ['#', 'Event', 'Name', 'Detail', 'Time'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, slice.map((e) => h('tr', {},
          h('td', { 'data-label': '#', class: 'num' }, String(e.eventId)),
          h('td', { 'data-label': 'Event' }, e.eventType),
          h('td', { 'data-label': 'Name' }, e.name || ''),
          h('td', { 'data-label': 'Detail' }, e.detail || ''),
          h('td', { 'data-label': 'Time' }, time(e.timestamp))))))));
  }

  // --- Data ------------------------------------------------------------------

  let loading = null;
  let reloadAgain = false;
  async function load() {
    if (loading) {
      reloadAgain = true;
      return;
    }
    loading = api('GET', base, { query: { showHistory: 'true' } });
    try {
      const { data } = await loading;
      if (!alive) return;
      st = data;
      gone = false;
      render();
    } catch (e) {
      if (!alive) return;
      if (e.status === 404) {
        if (st) gone = true;
        else replace(subtitle, e.detail);
        render();
      } else if (e.status !== 401) {
        message(msg, 'error', `Could not read ${id}: ${e.message}`);
      }
    } finally {
      loading = null;
      if (reloadAgain && alive) {
        reloadAgain = false;
        setTimeout(load, 1000);
      }
    }
  }

  // The feed carries the instance's status; the history is read again when
  // the instance changed, at most once a second.
  const onChange = (ev) => {
    if (!st) return;
    let changed = false;
    for (const x of ev.detail.instances) {
      if (x.instanceId !== id) continue;
      const historyStale = x.lastUpdatedTime !== st.lastUpdatedTime || x.runtimeStatus !== st.runtimeStatus;
      st = { ...x, history: st.history };
      changed = true;
      if (historyStale) load();
    }
    if (ev.detail.removed.includes(id)) {
      gone = true;
      changed = true;
    }
    const m = isMission(st) ? missionOf(st) : null;
    if (m && ev.detail.drones.some((d) => d.droneId === m.droneId)) changed = true;
    if (changed) render();
  };
  app.live.addEventListener('change', onChange);
  app.live.follow(['instances', 'fleet']);
  load();
  return () => {
    alive = false;
    app.live.removeEventListener('change', onChange);
  };
}
