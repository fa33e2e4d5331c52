// Maps drawn in SVG: an equirectangular projection around the bounding box
// of what is shown, on a plain background (no tiles: nothing is fetched).

import { s, clear, conditionLabel, conditionLetter, battery } from './ui.js';

export const W = 640;
export const H = 400;
// The margin keeps labels and the markers fanned out around a base inside.
const PAD = 60;
// The smallest span shown, in degrees of latitude (about 330 m), so one
// drone or a short hop still gets a readable map.
const MIN_SPAN = 0.003;

// projection fits points ({lat, lon}) into the view, keeping distances
// true in both directions at the box's middle latitude.
export function projection(points) {
  const pts = points.filter((p) => p && isFinite(p.lat) && isFinite(p.lon));
  if (!pts.length) pts.push({ lat: 0, lon: 0 });
  let minLat = Math.min(...pts.map((p) => p.lat));
  let maxLat = Math.max(...pts.map((p) => p.lat));
  let minLon = Math.min(...pts.map((p) => p.lon));
  let maxLon = Math.max(...pts.map((p) => p.lon));
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180) || 1;
  const midLat = (minLat + maxLat) / 2;
  const midLon = (minLon + maxLon) / 2;
  const spanY = Math.max(maxLat - minLat, MIN_SPAN);
  const spanX = Math.max((maxLon - minLon) * k, MIN_SPAN);
  const scale = Math.min((W - 2 * PAD) / spanX, (H - 2 * PAD) / spanY);
  return {
    scale, // pixels per degree of latitude
    x: (lon) => W / 2 + (lon - midLon) * k * scale,
    y: (lat) => H / 2 - (lat - midLat) * scale,
  };
}

// background draws the plain backdrop: a grid and a scale bar.
function background(svg, proj) {
  const g = s('g', { 'aria-hidden': 'true' });
  g.append(s('rect', { class: 'bg', x: 0, y: 0, width: W, height: H }));
  for (let x = 40; x < W; x += 40) g.append(s('line', { class: 'gridline', x1: x, y1: 0, x2: x, y2: H }));
  for (let y = 40; y < H; y += 40) g.append(s('line', { class: 'gridline', x1: 0, y1: y, x2: W, y2: y }));
  // Scale bar: a round distance near 120 px. A degree of latitude is
  // 111,195 m.
  const mPerPx = 111195 / proj.scale;
  const target = mPerPx * 120;
  const pow = Math.pow(10, Math.floor(Math.log10(target)));
  const nice = [1, 2, 5, 10].map((f) => f * pow).reduce((a, b) => (Math.abs(b - target) < Math.abs(a - target) ? b : a));
  const len = nice / mPerPx;
  g.append(s('line', { class: 'scale', x1: 12, y1: H - 14, x2: 12 + len, y2: H - 14 }));
  g.append(s('text', { class: 'label', x: 12, y: H - 20 }, nice >= 1000 ? `${nice / 1000} km` : `${nice} m`));
  svg.append(g);
}

function routePath(proj, r) {
  const pts = [r.home, r.pickup, r.dropoff, r.home];
  return pts.map((p) => `${proj.x(p.lon).toFixed(1)},${proj.y(p.lat).toFixed(1)}`).join(' ');
}

function position(d) {
  const p = d.state && d.state.position;
  return p ? { lat: p.lat, lon: p.lon } : d.home;
}

// FleetMap draws every drone, coloured by condition, and keeps each
// marker's element between updates so that keyboard focus stays put.
export class FleetMap {
  constructor(svg, onSelect) {
    this.svg = svg;
    this.onSelect = onSelect;
    this.selected = '';
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('class', 'map');
    this.markers = new Map();
    this.base = s('g');
    this.routes = s('g');
    this.layer = s('g');
    svg.append(this.base, this.routes, this.layer);
    this.box = '';
  }

  draw(drones) {
    const list = [...drones].sort((a, b) => a.droneId.localeCompare(b.droneId));
    const pts = [];
    for (const d of list) {
      pts.push(position(d), d.home);
      if (d.route) pts.push(d.route.pickup, d.route.dropoff);
    }
    const proj = projection(pts);
    const box = `${proj.scale}|${proj.x(0)}|${proj.y(0)}`;
    if (box !== this.box) {
      this.box = box;
      clear(this.base);
      background(this.base, proj);
    }
    clear(this.routes);
    for (const d of list) {
      if (d.route) this.routes.append(s('polyline', { class: 'route faint', points: routePath(proj, d.route) }));
    }
    // Drones at the same spot (a base) are fanned out around it, each
    // with a leader line to the spot, so that every one can be seen and
    // clicked.
    const at = new Map();
    const groups = new Map();
    for (const d of list) {
      const p = position(d);
      const x = proj.x(p.lon), y = proj.y(p.lat);
      at.set(d.droneId, { x, y });
      const key = `${Math.round(x / 10)}|${Math.round(y / 10)}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(d.droneId);
    }
    for (const ids of groups.values()) {
      if (ids.length < 2) continue;
      const c = at.get(ids[0]);
      const r = 20 + 3 * ids.length;
      this.routes.append(s('circle', { class: 'stop', cx: c.x.toFixed(1), cy: c.y.toFixed(1), r: 4 }));
      ids.forEach((id, i) => {
        const a = (2 * Math.PI * i) / ids.length - Math.PI / 2;
        const o = { x: c.x + r * Math.cos(a), y: c.y + r * Math.sin(a) };
        this.routes.append(s('line', { class: 'route faint', x1: c.x.toFixed(1), y1: c.y.toFixed(1), x2: o.x.toFixed(1), y2: o.y.toFixed(1) }));
        at.set(id, o);
      });
    }
    const seen = new Set();
    for (const d of list) {
      seen.add(d.droneId);
      let m = this.markers.get(d.droneId);
      if (!m) {
        m = this.marker(d.droneId);
        this.markers.set(d.droneId, m);
        this.layer.append(m.g);
      }
      const x = at.get(d.droneId).x.toFixed(1);
      const y = at.get(d.droneId).y.toFixed(1);
      m.g.setAttribute('transform', `translate(${x} ${y})`);
      m.g.setAttribute('data-x', x);
      m.g.setAttribute('data-y', y);
      m.g.setAttribute('data-condition', d.condition);
      m.dot.setAttribute('class', 'dot c-' + d.condition);
      m.letter.textContent = conditionLetter(d.condition);
      const b = d.state ? `, battery ${battery(d.state.battery)}` : '';
      m.g.setAttribute('aria-label', `${d.droneId}: ${conditionLabel(d.condition)}${b}${d.missionId ? ', mission ' + d.missionId : ''}`);
      m.title.textContent = m.g.getAttribute('aria-label');
      m.g.classList.toggle('selected', d.droneId === this.selected);
    }
    for (const [id, m] of this.markers) {
      if (!seen.has(id)) {
        m.g.remove();
        this.markers.delete(id);
      }
    }
  }

  marker(id) {
    const title = s('title');
    const ring = s('circle', { class: 'ring', r: 15 });
    const dot = s('circle', { r: 11 });
    const letter = s('text', { 'text-anchor': 'middle', dy: '4' });
    const label = s('text', { class: 'label', x: 15, y: -12 }, id);
    const g = s('g', { class: 'marker', tabindex: 0, role: 'button', 'data-drone': id }, title, ring, dot, letter, label);
    const pick = () => this.onSelect(id);
    g.addEventListener('click', pick);
    g.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        pick();
      }
    });
    return { g, dot, letter, title };
  }

  select(id) {
    this.selected = id;
    for (const [k, m] of this.markers) m.g.classList.toggle('selected', k === id);
  }
}

// RouteMap draws one mission's route, home → pickup → drop-off → home, and
// its drone.
export class RouteMap {
  constructor(svg) {
    this.svg = svg;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('class', 'map');
    this.key = '';
  }

  draw(route, drone) {
    const pos = drone && drone.position;
    const key = JSON.stringify(route);
    if (key !== this.key) {
      this.key = key;
      clear(this.svg);
      this.proj = projection([route.home, route.pickup, route.dropoff]);
      const p = this.proj;
      background(this.svg, p);
      this.svg.append(s('polyline', { class: 'route', points: routePath(p, route) }));
      const stops = [['home', route.home, 'Home'], ['pickup', route.pickup, 'Pickup'], ['dropoff', route.dropoff, 'Drop-off']];
      for (const [name, at, label] of stops) {
        const x = p.x(at.lon), y = p.y(at.lat);
        this.svg.append(s('g', { 'data-stop': name },
          s('rect', { class: 'stop', x: x - 6, y: y - 6, width: 12, height: 12 }),
          s('text', { class: 'label', x: x + 10, y: y + 16 }, label)));
      }
      this.dot = s('circle', { r: 11 });
      this.letter = s('text', { 'text-anchor': 'middle', dy: '4' });
      this.title = s('title');
      this.marker = s('g', { class: 'marker', 'data-drone': '', role: 'img' }, this.title, this.dot, this.letter);
      this.svg.append(this.marker);
    }
    if (!pos) {
      this.marker.setAttribute('visibility', 'hidden');
      return;
    }
    const x = this.proj.x(pos.lon).toFixed(1);
    const y = this.proj.y(pos.lat).toFixed(1);
    const cond = drone.condition || 'flying';
    this.marker.removeAttribute('visibility');
    this.marker.setAttribute('transform', `translate(${x} ${y})`);
    this.marker.setAttribute('data-drone', drone.id || '');
    this.marker.setAttribute('data-x', x);
    this.marker.setAttribute('data-y', y);
    this.marker.setAttribute('aria-label', `${drone.id || 'drone'}: ${conditionLabel(cond)}, at ${pos.lat.toFixed(5)}, ${pos.lon.toFixed(5)}`);
    this.title.textContent = this.marker.getAttribute('aria-label');
    this.dot.setAttribute('class', 'c-' + cond);
    this.letter.textContent = conditionLetter(cond);
  }
}
