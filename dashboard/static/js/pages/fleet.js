// The fleet: every drone on a map, coloured by condition, the summary, and
// the state and mission of the drone picked on the map or in the table.

import { FleetMap } from '../map.js';
import { h, s, replace, battery, dateTime, missionOf, CONDITIONS, conditionLabel } from '../ui.js';

export function fleetPage(main, app, selectedId) {
  let selected = selectedId || '';
  // Not a live region: it changes every second while drones fly.
  const cards = h('div', { class: 'cards', id: 'fleet-summary' });
  const svg = s('svg', { role: 'group', 'aria-label': 'Fleet map: each drone is a button; press Enter to show it', id: 'fleet-map' });
  const map = new FleetMap(svg, (id) => select(id, true));
  map.select(selected);
  const legend = h('ul', { class: 'legend', 'aria-label': 'Legend' },
    CONDITIONS.map(([k, label, letter]) => h('li', {}, h('span', { class: 'swatch ' + k, 'aria-hidden': 'true' }), `${label} (${letter})`)));
  const panel = h('section', { class: 'panel', id: 'drone-panel', 'aria-labelledby': 'drone-h', tabindex: '-1' });
  const tbody = h('tbody');
  const table = h('table', { class: 'responsive', id: 'drones' },
    h('thead', {}, h('tr', {}, ['Drone', 'Condition', 'Battery', 'Flight mode', 'Health', 'Mission', 'Last frame'].map((c) => h('th', { scope: 'col' }, c)))),
    tbody);
  const empty = h('p', { class: 'note' }, 'Waiting for the live feed…');

  replace(main,
    h('h1', { tabindex: '-1' }, 'Fleet'),
    cards,
    h('div', { class: 'grid2' },
      h('section', { class: 'panel', 'aria-labelledby': 'map-h' },
        h('h2', { id: 'map-h' }, 'Map'), svg, legend,
        h('p', { class: 'note' }, 'Positions on a plain projected background (north up), drawn from the drones\' telemetry.')),
      panel),
    h('h2', {}, 'Drones'), empty, h('div', { class: 'table-wrap' }, table));

  function select(id, focus) {
    selected = id;
    map.select(id);
    history.replaceState(null, '', '#/fleet/' + encodeURIComponent(id));
    renderPanel();
    if (focus) panel.focus();
  }

  function renderCards() {
    const f = app.live.fleet;
    if (!f) return;
    replace(cards,
      h('div', { class: 'card' }, h('div', { class: 'v', 'data-count': 'drones' }, String(f.drones)), h('div', { class: 'k' }, 'Drones')),
      CONDITIONS.map(([k, label]) => h('div', { class: 'card' },
        h('div', { class: 'v', 'data-count': k }, String(f.byCondition[k] || 0)),
        h('div', { class: 'k' }, h('span', { class: 'swatch ' + k, 'aria-hidden': 'true' }), ' ', label))),
      h('div', { class: 'card' }, h('div', { class: 'v', 'data-count': 'battery' }, f.averageBattery === undefined ? '–' : battery(f.averageBattery)), h('div', { class: 'k' }, 'Average battery')));
  }

  function renderPanel() {
    const d = app.live.drones.get(selected);
    if (!d) {
      replace(panel, h('h2', { id: 'drone-h' }, 'Drone'), h('p', { class: 'note' }, selected ? `No drone ${selected} in the fleet.` : 'Pick a drone on the map or in the table.'));
      return;
    }
    const st = d.state;
    const mission = d.missionId ? app.live.instances.get(d.missionId) : null;
    const m = mission ? missionOf(mission) : null;
    const fact = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    replace(panel,
      h('h2', { id: 'drone-h' }, `Drone ${d.droneId}`),
      h('dl', { class: 'facts' },
        fact('Condition', h('span', {}, h('span', { class: 'swatch ' + d.condition, 'aria-hidden': 'true' }), ' ', conditionLabel(d.condition))),
        fact('Battery', st ? battery(st.battery) : '–'),
        fact('Flight mode', st ? st.flightMode : '–'),
        fact('Position', st ? `${st.position.lat.toFixed(5)}, ${st.position.lon.toFixed(5)}, ${Math.round(st.position.alt)} m up` : 'no telemetry yet'),
        fact('Health', d.health),
        fact('Home', `${d.home.lat.toFixed(5)}, ${d.home.lon.toFixed(5)}`),
        fact('Frames', String(d.frames)),
        fact('Last frame', st ? dateTime(st.timestamp) : '–'),
        fact('Mission', d.missionId
          ? h('span', {}, h('a', { href: '#/missions/' + encodeURIComponent(d.missionId), id: 'drone-mission' }, d.missionId), m ? ` (${m.phase})` : '')
          : 'none')));
  }

  function renderTable() {
    const drones = [...app.live.drones.values()].sort((a, b) => a.droneId.localeCompare(b.droneId));
    empty.hidden = drones.length > 0 || !app.live.fleet;
    if (app.live.fleet && !drones.length) empty.textContent = 'The fleet is empty: register drones with POST /api/drones.';
    const focusedId = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.pick : '';
    replace(tbody, drones.map((d) => {
      const st = d.state;
      return h('tr', { 'data-drone-row': d.droneId },
        h('td', { 'data-label': 'Drone' }, h('button', { type: 'button', class: 'link', 'data-pick': d.droneId, onclick: () => select(d.droneId, true) }, d.droneId)),
        h('td', { 'data-label': 'Condition', 'data-col': 'condition' }, conditionLabel(d.condition)),
        h('td', { 'data-label': 'Battery' }, st ? battery(st.battery) : '–'),
        h('td', { 'data-label': 'Flight mode' }, st ? st.flightMode : '–'),
        h('td', { 'data-label': 'Health' }, d.health),
        h('td', { 'data-label': 'Mission' }, d.missionId ? h('a', { href: '#/missions/' + encodeURIComponent(d.missionId) }, d.missionId) : '–'),
        h('td', { 'data-label': 'Last frame' }, st ? dateTime(st.timestamp) : '–'));
    }));
    if (focusedId) {
      const b = tbody.querySelector(`[data-pick="${CSS.escape(focusedId)}"]`);
      if (b) b.focus();
    }
  }

  function renderAll() {
    renderCards();
    map.draw(app.live.drones.values());
    renderPanel();
    renderTable();
  }

  const onChange = (ev) => {
    const c = ev.detail;
    if (c.snapshot || c.drones.length || c.removedDrones.length || c.fleet) renderAll();
    else if (selected && c.instances.length) renderPanel();
  };
  app.live.addEventListener('change', onChange);
  app.live.follow(['instances', 'fleet']);
  renderAll();
  return () => app.live.removeEventListener('change', onChange);
}
